"""The panel: the settings form, the tabs, Run and Cancel, wired to one Session.

The panel keeps no state of its own beyond what is on screen: settings live in the Session
(``configure``), looking is ``vram()``, ``plan()`` and ``preview()``, running is ``run()`` and
``cancel()``, and the results are ``s.result`` and ``s.plot()``. Whatever the panel does can be
done, and read back, from Python on the same session.

Every handler catches what it calls: a mistake shows as one line in the panel, under its field
or under the buttons, never as a traceback in some other cell.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as w

from ..engine.errors import QwodelError
from ..engine.model_info import is_local_model
from ..engine.secrets import redact
from ..engine.settings import canonical_options
from .common import COLORS, message_html, one_line
from .fields import AUTO_FIELDS, FORM_FIELDS, SettingsForm
from .progress import ProgressListener, ProgressView
from .runner import Outcome, RunController
from .tabs import PlanTab, PreviewTab, ResultsTab, VramTab
from .ui_poll import KernelPoller
from .validation import field_errors, session_errors

TAB_TITLES = ("Settings", "VRAM", "Plan", "Preview", "Results")
SETTINGS, VRAM, PLAN, PREVIEW, RESULTS = range(len(TAB_TITLES))


class Panel:
    """Configure, check VRAM, preview, run with progress and cancel, and read the results.

    ``Panel(session=None, run_mode="auto", preview_rows=5, **options)``: wraps ``session``, or a
    new Session made from ``options`` (any Session/Quantizer option) once the form holds a valid
    model. Options given with a session change that session's settings. Display the panel (or
    end a cell with it); ``panel.session`` is the Session, ``panel.run()`` presses Run.
    """

    def __init__(self, session: Any = None, *, run_mode: str = "auto", preview_rows: int = 5,
                 poller_factory: Callable[[], Any] = KernelPoller, **options: Any):
        self.runner = RunController(run_mode, poller_factory)
        given = canonical_options(options)
        self.session = session
        self._extra = {k: v for k, v in given.items() if k not in FORM_FIELDS}  # options the form does not edit
        if session is not None and self._extra:
            session.configure(**self._extra)
        self.valid = False
        self._last_options: dict[str, Any] | None = None
        self.listener: ProgressListener | None = None
        self._check_failure = ""  # a validation that crashed, shown under the buttons until one passes

        self.form = SettingsForm()
        self.vram_tab = VramTab()
        self.plan_tab = PlanTab()
        self.preview_tab = PreviewTab(preview_rows)
        self.results_tab = ResultsTab()
        self.progress = ProgressView()
        self.header = w.HTML("")
        self.message = w.HTML("")
        self.run_button = w.Button(description="Run AWQ", button_style="primary", icon="play",
                                   tooltip="Quantize with AWQ (W4A16) and write the output folder")
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop", disabled=True,
                                      tooltip="Stop at the next grid point; nothing is written")
        self.tabs = w.Tab(children=[self.form.widget, self.vram_tab.widget, self.plan_tab.widget,
                                    self.preview_tab.widget, self.results_tab.widget])
        for index, title in enumerate(TAB_TITLES):
            self.tabs.set_title(index, title)
        self.widget = w.VBox([self.header, self.tabs, w.HBox([self.run_button, self.cancel_button]),
                              self.progress.widget, self.message],
                             layout=w.Layout(border="1px solid #ddd", padding="6px"))

        values = {name: getattr(session.settings, name) for name in FORM_FIELDS} if session is not None else {}
        values.update({k: v for k, v in given.items() if k in FORM_FIELDS})
        self.form.load(values)
        self.form.on_change(lambda name: self.validate())
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.vram_tab.refresh.on_click(lambda _: self.refresh_vram())
        self.plan_tab.refresh.on_click(lambda _: self.refresh_plan())
        self.preview_tab.refresh.on_click(lambda _: self.refresh_preview())

        self.validate(force=True)
        if session is not None and session.result is not None:
            self.results_tab.show(session.result, session.plot)

    # -- display -------------------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return f"<qwodel Panel over {self.session!r}, run mode {self.runner.mode!r}>"

    def _redact(self, text: str) -> str:
        """``text`` without the session's token, or anything shaped like one (a token pasted into a field)."""
        token = self.form.rows["token"].value()
        return redact(text, token, getattr(getattr(self.session, "settings", None), "token", None))

    def _say(self, text: str, kind: str = "error") -> None:
        self.message.value = message_html(self._redact(text) if text else "", kind)

    def _show_header(self) -> None:
        state = self.session.state if self.session is not None else "no session yet"
        self.header.value = (
            "<div style='font-family:system-ui,sans-serif;font-size:15px;margin:2px 0 6px 0'>"
            "<b>qwodel</b> AWQ 4-bit (W4A16) "
            f"<span style='font-size:12px;color:{COLORS['muted']}'>session: <b>{html.escape(state)}</b>, "
            f"run mode: {html.escape(self.runner.mode)}</span></div>"
        )

    def _sync_buttons(self) -> None:
        running = self.runner.running
        ready = self.session is not None and not running
        self.run_button.disabled = running or not self.valid or self.session is None
        self.cancel_button.disabled = not running
        for button in (self.vram_tab.refresh, self.plan_tab.refresh, self.preview_tab.refresh):
            button.disabled = not ready
        self._show_header()

    # -- settings -----------------------------------------------------------------------------------

    def validate(self, force: bool = False) -> bool:
        """Check the form with the engine's own rules; messages go under their fields. True when Run may go."""
        if self.runner.running:
            return False
        options = self.form.options()
        if not force and options == self._last_options:
            return self.valid
        self._last_options = options
        errors = field_errors(options)
        changed = False
        try:
            if not errors:
                changed = self._apply(options)
            if not errors and self.session is not None:
                errors.update(session_errors(self.session))
                if changed or force:
                    self._refresh_hints(model_ok="model" not in errors)
        except QwodelError as exc:  # e.g. a run started from code holds the session
            errors.setdefault("model", exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug, reported as one line instead of a traceback
            self._check_failure = one_line(exc, options.get("token"))
            self._say(self._check_failure)
            errors.setdefault("model", "This model could not be checked; see the message below.")
        else:
            if self._check_failure:  # the last check's failure is gone with the change that fixed it
                self._check_failure = ""
                self._say("")
        self.form.show_errors({name: self._redact(text) for name, text in errors.items()})
        self.valid = not errors
        self._sync_buttons()
        return self.valid

    def _apply(self, options: dict[str, Any]) -> bool:
        """Hand valid options to the session (making it on first use); True when something changed."""
        if self.session is None:
            from ..session import Session

            self.session = Session(**{**self._extra, **options})
            return True
        current = self.session.settings
        wanted = current.replace(**options)
        if wanted == current and wanted.token == current.token:
            return False
        self.session.configure(**options)
        return True

    def _refresh_hints(self, model_ok: bool) -> None:
        """The auto fields' values: from the last plan when there is one, else from the VRAM table."""
        session = self.session
        plan = session.last_plan
        if plan is not None and plan.settings == session.settings:
            hints = {}
            for name in AUTO_FIELDS:
                choice = getattr(plan.calibration, name)
                reason = "; ".join([choice.reason, *choice.caps])
                hints[name] = (choice.value, reason, "plan")
            self.form.set_hints(hints)
            return
        if not model_ok or not is_local_model(session.settings.model):
            # A hub model is read when asked for (VRAM refresh, plan), not on every change.
            note = "see the VRAM tab" if model_ok else "once the model can be read"
            self.form.set_hints({name: (None, note, "auto") for name in AUTO_FIELDS})
            return
        try:
            view = session.vram()
        except QwodelError as exc:
            self.vram_tab.show_error(exc.message)
            return
        self.vram_tab.show_vram(view)
        self._hints_from_vram(view)

    def _hints_from_vram(self, view: Any) -> None:
        row = view.table_row()
        if row is None:
            self.form.set_hints({name: (None, "headroom unknown", "auto") for name in AUTO_FIELDS})
            return
        why, (batch, seq, samples) = row
        values = {"batch_size": batch, "seq_len": seq, "num_samples": samples}
        self.form.set_hints({name: (values[name], why + ", before caps", "auto") for name in AUTO_FIELDS})

    # -- looking -------------------------------------------------------------------------------------

    def _guarded(self, action: Callable[[], None], report: Callable[[str], None]) -> None:
        if self.session is None or self.runner.running:
            return
        try:
            action()
        except QwodelError as exc:
            report(exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug to report, shown as one line
            report(one_line(exc, self.session.settings.token))
        self._sync_buttons()

    def refresh_vram(self) -> None:
        def action() -> None:
            view = self.session.vram()
            self.vram_tab.show_vram(view)
            if self.session.last_plan is None:
                self._hints_from_vram(view)

        self._guarded(action, lambda text: self.vram_tab.show_error(text))

    def refresh_plan(self) -> None:
        def action() -> None:
            self.plan_tab.show_html(self.session.plan()._repr_html_())
            self._refresh_hints(model_ok=True)

        self._guarded(action, lambda text: self.plan_tab.show_error(text))

    def refresh_preview(self) -> None:
        def action() -> None:
            self.preview_tab.show_html(self.session.preview(int(self.preview_tab.rows.value))._repr_html_())
            self._refresh_hints(model_ok=True)

        self._guarded(action, lambda text: self.preview_tab.show_error(text))

    # -- running -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Press Run: check the settings, then quantize in the panel's run mode."""
        if self.runner.running:
            return
        if not self.validate(force=True):
            self._say("Fix the settings marked in the Settings tab first.")
            self.tabs.selected_index = SETTINGS
            return
        self._say("")
        self.form.set_enabled(False)
        plan = self.session.last_plan
        self.progress.reset(plan.model.num_layers if plan is not None else 1)
        self.run_button.disabled = True
        self.cancel_button.disabled = False
        self.runner.start(self.session, self._make_listener, self._finished)
        self._sync_buttons()

    def _make_listener(self, between_points: Callable[[], Any] | None) -> ProgressListener:
        plan = self.session.last_plan
        self.listener = ProgressListener(self.progress, plan.model.num_layers if plan is not None else 1,
                                         between_points=between_points)
        return self.listener

    def cancel(self) -> None:
        """Press Cancel: the run stops at its next grid point and writes nothing."""
        if self.session is None or not self.runner.running:
            return
        self.session.cancel()
        self.cancel_button.disabled = True
        self._say("Cancelling: the run stops at its next grid point and writes nothing.", "note")

    def _finished(self, outcome: Outcome) -> None:
        """Show how a run ended; called from the thread that ran it, so it catches everything."""
        try:
            if self.listener is not None:
                self.progress.render(self.listener.state)
                self.progress.finish(outcome.state, self.listener.state)
            if outcome.state == "done":
                self.results_tab.show(outcome.result, self.session.plot)
                done = f"Done: the 4-bit model is in {outcome.result.output_path}"
                self._say(f"{done}. {outcome.message}" if outcome.message else done, "ok")
                self.tabs.selected_index = RESULTS
            else:
                self._say(outcome.message, "warning" if outcome.state == "cancelled" else "error")
        except Exception as exc:  # noqa: BLE001 - the run's own outcome is in self.runner.outcome
            self._say(f"The run ended ({outcome.state}) but showing it failed: {one_line(exc)}")
        finally:
            try:
                self.validate(force=True)  # before the fields open again: the output folder may be full now
            except Exception as exc:  # noqa: BLE001
                self._say(one_line(exc))
            self.form.set_enabled(True)
            self._sync_buttons()


def open_panel(session: Any = None, **options: Any) -> Panel:
    """``qwodel_nb.panel(session=None, run_mode="auto", **options)``: a panel over ``session`` or a new one."""
    return Panel(session, **options)
