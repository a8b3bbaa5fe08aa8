"""``%%qwodel`` and ``%qwodel``: the notebook magics, over one current :class:`~qwodel_nb.Session`.

    %load_ext qwodel_nb

    %%qwodel s
    model: ./gemma-2
    output: ./gemma-2-awq
    calibration: {texts}        # {name}: a notebook variable (a whole value passes the object itself)
    num_samples: 64

The cell shows, in order: the VRAM headroom, the plan, a calibration preview, the AWQ progress,
the statistics overview and the result. ``s`` (and the magic's current session) is the
:class:`Session`; ``%qwodel plan`` and friends act on it. Settings of the magic itself are
traitlets: ``%config QwodelMagics.autoplot = False``.

Only APIs present in IPython 7.34 (Colab) and current IPython are used.
"""

from __future__ import annotations

import html
import io
import os
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Bool, Int, Unicode
from traitlets.config import Configurable

from .engine.errors import QwodelError, interrupted_message
from .engine.secrets import Secret, redact
from .magic_args import (
    CELL_USAGE,
    LINE_COMMANDS,
    CellArgs,
    MagicError,
    model_name,
    parse_body,
    parse_cell_line,
    parse_line_command,
)

HELP = f"""\
{CELL_USAGE}
    The cell body is YAML: one 'key: value' per line with the Quantizer/Session option names
    (model, output, calibration_dataset or calibration, calibration_split, text_column, num_samples,
    seq_len, batch_size, group_size, symmetric, ignore, mappings, dtype, device, seed, trust_remote_code,
    overwrite, awq_search, clip, gpus; eval_text for --evaluate). {{name}} inserts the notebook variable `name`.
    gpus: N calibrates on N GPUs, one process each under torchrun; progress and results show here as usual.
    Shows VRAM headroom, the plan and a calibration preview, runs AWQ with live progress, then the
    statistics overview and the result. VAR is bound to the Session. An empty body re-runs the
    current session.
      --dry-run   stop after the preview: nothing is loaded beyond the tokenizer, nothing written
      --no-plot   do not show the statistics overview after the run
      --evaluate  measure perplexity before/after (on eval_text, else the dataset's held-out split)
      --yes       confirm replacing a non-empty output folder (same as overwrite: true)

%qwodel vram | plan | preview [n] | run [--yes] [--evaluate] [--no-plot] | plot [kind] | stats | status | panel | help
    act on the current session (the last %%qwodel cell's); panel opens the widget panel over it
    (with no current session, an empty panel whose session becomes the current one).

%config QwodelMagics.autoplot = True      show the statistics overview after a run
%config QwodelMagics.autopreview = True   show a calibration preview before a run
%config QwodelMagics.preview_rows = 5     samples in the preview
%config QwodelMagics.output_root = None   a folder: cells without output: write to
                                          <output_root>/<model name>-awq-int4

Hugging Face token: do not write it in a cell; set HF_TOKEN or run `huggingface-cli login`.
"""

class Message:
    """A message block: HTML in notebooks, one plain line elsewhere (``text/plain`` fallback)."""

    _COLORS = {"error": "#D55E00", "warning": "#E69F00", "note": "#0072B2"}

    def __init__(self, text: str, kind: str = "error"):
        self.text = text
        self.kind = kind

    def __repr__(self) -> str:
        return f"qwodel {self.kind}: {self.text}"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        color = self._COLORS.get(self.kind, "#555")
        return (f"<div class='qwodel' style='font-family:system-ui,sans-serif;font-size:13px;"
                f"border-left:4px solid {color};padding:4px 8px;margin:4px 0;background:#f7f7f7'>"
                f"<b style='color:{color}'>qwodel {html.escape(self.kind)}</b>: {html.escape(self.text)}</div>")


class FigureView:
    """A matplotlib Figure shown as PNG without pyplot or an inline backend; text elsewhere."""

    def __init__(self, figure: Any, kind: str = "overview"):
        self.figure = figure
        self.kind = kind

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def __repr__(self) -> str:
        w, h = self.figure.get_size_inches()
        return f"<qwodel {self.kind} figure, {w:.0f}x{h:.0f} in>"


@magics_class
class QwodelMagics(Magics, Configurable):
    """``%%qwodel`` (configure, look, run) and ``%qwodel`` (act on the current session)."""

    autoplot = Bool(True, help="Show the statistics overview plot after a run.").tag(config=True)
    autopreview = Bool(True, help="Show a calibration preview before a run.").tag(config=True)
    preview_rows = Int(5, help="Calibration samples shown in the preview.").tag(config=True)
    output_root = Unicode(
        None, allow_none=True,
        help="When set, a cell without 'output:' writes to <output_root>/<model name>-awq-int4.",
    ).tag(config=True)

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.session = None
        self.last_panel = None  # the panel %qwodel panel opened last
        self._extras: dict[str, Any] = {}

    # -- showing things --------------------------------------------------------------------------

    def _secrets(self) -> list[Secret]:
        token = getattr(getattr(self.session, "settings", None), "token", None)
        return [token] if isinstance(token, Secret) else []

    def _message(self, text: str, kind: str = "error", secrets: tuple = ()) -> None:
        display(Message(redact(text, *self._secrets(), *secrets), kind))

    def _require_session(self):
        if self.session is None:
            raise MagicError("No current session: run a %%qwodel cell with model: and output: first.")
        return self.session

    # -- the cell magic --------------------------------------------------------------------------

    @cell_magic
    def qwodel(self, line: str = "", cell: str | None = None):
        """%%qwodel [VAR] [--dry-run] [--no-plot] [--evaluate] [--yes]: see %qwodel help."""
        if cell is None:
            return self._line(line)
        literal: tuple = ()
        try:
            args = parse_cell_line(line)
            body = parse_body(cell, self.shell.user_ns)
            token = body.options.get("token", body.options.get("hf_token"))
            if isinstance(token, str):
                literal = (Secret(token),) if token.strip() else ()
            for warning in body.warnings:
                self._message(warning, "warning", literal)
            if body.empty:
                session = self._require_session()
            else:
                session = self._new_session(body.options, args, literal)
                self._extras = dict(body.extras)
            self.session = session
            if args.var:
                self.shell.user_ns[args.var] = session
            self._cell(session, args)
        except QwodelError as exc:
            self._message(exc.message, secrets=literal)
        except KeyboardInterrupt as exc:
            self._message(interrupted_message(exc))
        return None

    def _new_session(self, options: dict[str, Any], args: CellArgs, literal: tuple):
        from .session import Session

        options = dict(options)
        given_output = next((options[k] for k in ("output", "output_dir", "output_path") if options.get(k)), None)
        model = next((options[k] for k in ("model", "model_path", "model_id") if options.get(k) is not None), None)
        if model is None:
            raise MagicError("No model in the cell: add a line 'model: <local folder or hub id>'.")
        if given_output is None and self.output_root and isinstance(model, (str, os.PathLike)):
            fmt = str(options.get("format") or "int4")
            options["output"] = os.path.join(os.path.expanduser(self.output_root), f"{model_name(model)}-awq-{fmt}")
        if args.yes:
            options["overwrite"] = True
        return Session(**options)

    def _check_output(self, session, args: CellArgs) -> None:
        """Before anything is loaded: an output is set, and a non-empty one is replaced only with --yes."""
        settings = session.settings
        if not settings.output:
            raise MagicError(
                "No output folder: add a line 'output: ./<folder>' to the cell, or set a default root with "
                "%config QwodelMagics.output_root = '<folder>' (--dry-run looks without an output)."
            )
        full = os.path.abspath(os.path.expanduser(settings.output))
        if os.path.isdir(full) and os.listdir(full) and not settings.overwrite:
            if not args.yes:
                raise MagicError(
                    f"Output folder {settings.output!r} is not empty. To replace it, add --yes to the "
                    "%%qwodel line (or 'overwrite: true' to the cell); or choose another output."
                )
            session.configure(overwrite=True)

    def _cell(self, session, args: CellArgs) -> None:
        if not args.dry_run:
            self._check_output(session, args)
        plan = session.plan()  # first: a missing model or bad data is one message, before anything is shown
        display(session.vram())
        display(plan)
        if self.autopreview or args.dry_run:
            display(session.preview(self.preview_rows))
        if args.dry_run:
            return
        self._run(session, evaluate=args.evaluate, plot=self.autoplot and not args.no_plot)

    def _run(self, session, *, evaluate: bool, plot: bool) -> None:
        from .display import ResultView

        result = session.run(progress=True, evaluate=evaluate, eval_text=self._extras.get("eval_text"))
        if plot and result.stats is not None and len(result.stats):
            self._show_figure(session.plot("overview"), "overview")
        display(ResultView(result))

    def _show_figure(self, figure: Any, kind: str) -> None:
        """The notebook's own figure formatter when one is set up (inline backend), else PNG."""
        for mime, formatter in self.shell.display_formatter.formatters.items():
            if mime.startswith("image/") or mime == "application/pdf":
                try:
                    formatter.lookup(figure)
                except KeyError:
                    continue
                display(figure)
                return
        display(FigureView(figure, kind))

    # -- the line magic -----------------------------------------------------------------------------

    @line_magic("qwodel")
    def qwodel_line(self, line: str = ""):
        """%qwodel vram | plan | preview [n] | run | plot [kind] | stats | status | panel | help"""
        return self._line(line)

    def _line(self, line: str):
        try:
            cmd = parse_line_command(line)
            if cmd.command == "help":
                print(HELP)
                return None
            if cmd.command == "panel":
                self._panel()
                return None
            session = self._require_session()
            if cmd.command == "status":
                print(redact(session.status(), *self._secrets()))
            elif cmd.command == "vram":
                display(session.vram())
            elif cmd.command == "plan":
                display(session.plan())
            elif cmd.command == "preview":
                display(session.preview(self.preview_rows if cmd.n is None else cmd.n))
            elif cmd.command == "run":
                self._check_output(session, CellArgs(yes=cmd.yes))
                self._run(session, evaluate=cmd.evaluate, plot=self.autoplot and not cmd.no_plot)
            elif cmd.command == "plot":
                self._show_figure(session.plot(cmd.kind), cmd.kind)
            elif cmd.command == "stats":
                display(self._stats(session))
        except QwodelError as exc:
            self._message(exc.message)
        except KeyboardInterrupt as exc:
            self._message(interrupted_message(exc))
        return None

    def _panel(self) -> None:
        """The widget panel over the current session; with none yet, an empty panel whose session
        becomes the current one once its form holds a valid model."""
        from .widgets import open_panel

        panel = open_panel(self.session)
        self.last_panel = panel
        if self.session is None:
            panel.form.on_change(lambda name: self._adopt(panel))
        display(panel)

    def _adopt(self, panel) -> None:
        if self.session is None and panel.session is not None:
            self.session = panel.session

    @staticmethod
    def _stats(session):
        if session.result is None:
            raise MagicError("No finished run in the current session yet; run it first (%qwodel run).")
        stats = session.result.stats
        try:
            import pandas  # noqa: F401
        except ImportError:
            return stats.to_records()
        return stats.to_dataframe()


# -- extension loading ------------------------------------------------------------------------------

_carried_session: Any = None  # the current session, kept across %reload_ext


def _loaded(shell) -> QwodelMagics | None:
    magics = shell.magics_manager.registry.get("QwodelMagics")
    if magics is not None and "qwodel" in shell.magics_manager.magics["cell"]:
        return magics
    return None


def load_ipython_extension(shell) -> None:
    """``%load_ext qwodel_nb``: register the magics; loading twice keeps the first registration."""
    global _carried_session
    if _loaded(shell) is not None:
        return
    magics = QwodelMagics(shell=shell, parent=shell)
    if _carried_session is not None:
        magics.session, _carried_session = _carried_session, None
    shell.register_magics(magics)
    if not any(c is magics for c in shell.configurables):  # Magics.__init__ adds itself in most versions
        shell.configurables.append(magics)


def unload_ipython_extension(shell) -> None:
    """``%unload_ext qwodel_nb``: remove the magics (the current session is kept for a reload)."""
    global _carried_session
    manager = shell.magics_manager
    magics = manager.registry.pop("QwodelMagics", None)
    for kind in ("line", "cell"):
        manager.magics[kind].pop("qwodel", None)
    if magics is not None:
        _carried_session = magics.session
        shell.configurables[:] = [c for c in shell.configurables if c is not magics]


__all__ = ["QwodelMagics", "Message", "FigureView", "load_ipython_extension", "unload_ipython_extension",
           "LINE_COMMANDS", "HELP"]
