"""Session: the state of one model's quantization, which the magic and the panel both wrap.

    from qwodel_nb import Session
    s = Session(model="Qwen/Qwen2.5-0.5B-Instruct", output="./out")  # any Quantizer option too
    s.vram()        # GPUs, free memory, headroom for this model
    s.plan()        # resolved settings, each auto value with the reason it was chosen
    s.preview(5)    # calibration samples as the model will see them
    s.run()         # AWQ with live progress; returns s.result
    s.plot()        # per-layer scale statistics (matplotlib Figure)
    s.result.stats  # per-layer records, exportable

States: ``configured`` -> ``planned`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``.
Settings can change in any state but ``running``; a change returns the session to
``configured``. After a failure or a cancel the session can run again.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Sequence

from .display import CalibrationPreview, PlanView, ResultView, VramView
from .engine.calibration import CalibrationSet, RawCalibration, is_local_source, read_source
from .engine.errors import (
    CalibrationDataError,
    CancelledError,
    InterruptedAfterOutput,
    QwodelError,
    RunCancelled,
    StateError,
)
from .engine.logs import library_bars_silenced, route_library_logs
from .engine.model_info import ModelInfo, inspect_model, is_local_model
from .engine.output import check_output
from .engine.plan import Plan, make_plan, resolve_placement
from .engine.progress import Listener
from .engine.report import vllm_snippet
from .engine.run import RunResult, execute, load_tokenizer, prepare_calibration
from .engine.secrets import resolve_token
from .engine.settings import Settings, make_settings
from .engine.vram import probe

STATES = ("configured", "planned", "running", "done", "failed", "cancelled")


@dataclass
class SessionResult(RunResult):
    """A finished run (:class:`RunResult`: output, timings, sizes, peak memory, ``stats`` with one
    record per AWQ mapping), plus the evaluation when one was made."""

    perplexity: dict[str, float] | None = None
    layer_errors: list[float] | None = field(default=None, repr=False)
    evaluation_error: str | None = None

    @property
    def vllm_snippet(self) -> str:
        return vllm_snippet(self.output_path)

    @classmethod
    def from_run(cls, run: RunResult) -> "SessionResult":
        return cls(**{f.name: getattr(run, f.name) for f in fields(RunResult)})

    def _repr_html_(self) -> str:
        return ResultView(self)._repr_html_()

    def __str__(self) -> str:
        return str(ResultView(self))


class Session:
    """One model's quantization: configure, look before you pay, run, read the results."""

    #: level of llm-compressor's own log lines, which go to standard error during a run
    library_log_level = "WARNING"

    def __init__(self, model: str | None = None, output: str | None = None, **options: Any):
        self._lock = threading.RLock()
        self._settings = make_settings(model=model, output=output, **options)
        self._state = "configured"
        self._plan: Plan | None = None
        self._model_info: tuple[tuple, ModelInfo] | None = None
        self._raw: tuple[tuple, RawCalibration] | None = None
        self._calibration: tuple[tuple, CalibrationSet] | None = None
        self._cancel = threading.Event()
        self.result: SessionResult | None = None
        self.error: BaseException | None = None

    # -- state and settings ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def settings(self) -> Settings:
        return self._settings

    def configure(self, **changes: Any) -> "Session":
        """Change settings (any Quantizer option); not allowed while a run is going."""
        with self._lock:
            if self._state == "running":
                raise StateError("A run is going; wait for it or cancel() it before changing settings.")
            self._settings = self._settings.replace(**changes)
            self._plan = None
            self._state = "configured"
        return self

    # -- cached reads -----------------------------------------------------------------------------

    def _info(self) -> ModelInfo:
        s = self._settings
        key = (s.model, s.trust_remote_code, s.token)
        if self._model_info is None or self._model_info[0] != key:
            info = inspect_model(s.model, resolve_token(s.token), s.trust_remote_code)
            self._model_info = (key, info)
        return self._model_info[1]

    def _raw_calibration(self) -> RawCalibration:
        s = self._settings
        source = s.calibration_dataset
        key = (id(source) if not isinstance(source, str) else source, s.calibration_split, s.text_column)
        if self._raw is None or self._raw[0] != key:
            self._raw = (key, read_source(source, s.calibration_split, s.text_column, resolve_token(s.token)))
        return self._raw[1]

    # -- looking before paying -------------------------------------------------------------------

    def check(self, *, network: bool = False) -> dict[str, str]:
        """Problems with the model, the calibration data and the output, found without loading weights.

        Returns ``{setting: one-line message}``, empty when nothing is wrong. It reads a local
        model's config.json and module tree and a local calibration file (both cached, as for
        plan()) and looks at the output folder. Hub models and hub datasets are checked only with
        ``network=True``: the widget panel checks on every change and must not wait for the
        network each time; plan() and run() check everything anyway.
        """
        s = self._settings
        problems: dict[str, str] = {}
        if network or is_local_model(s.model):
            try:
                self._info()
            except QwodelError as exc:
                problems["model"] = exc.message
        if network or is_local_source(s.calibration_dataset):
            try:
                self._raw_calibration()
            except QwodelError as exc:
                problems["calibration_dataset"] = exc.message
        try:
            check_output(s.output, s.overwrite)
        except QwodelError as exc:
            problems["output"] = exc.message
        return problems

    def vram(self) -> VramView:
        """GPUs (index as torch numbers them, name, total, used, free) and this model's headroom."""
        report = probe()
        try:
            where = resolve_placement(self._settings, self._info(), report)
            note = None
        except QwodelError as exc:
            where, note = None, exc.message
        return VramView(report, where, note)

    def plan(self) -> PlanView:
        """Every setting resolved, with reasons; reads config and headers only, loads no weights."""
        with self._lock:
            if self._state == "running":
                raise StateError("A run is going; its plan is in s.last_plan.")
            plan = make_plan(self._settings, require_output=False, model_info=self._info(),
                             raw_calibration=self._raw_calibration())
            self._plan = plan
            if self._state == "configured":
                self._state = "planned"
        return PlanView(plan)

    @property
    def last_plan(self) -> Plan | None:
        return self._plan

    def calibration_set(self) -> CalibrationSet:
        """The tokenized calibration samples of the current plan (cached)."""
        plan = self._plan if self._plan is not None else self.plan().plan
        key = (plan.settings, plan.num_samples, plan.seq_len, plan.batch_size)
        if self._calibration is None or self._calibration[0] != key:
            tokenizer = load_tokenizer(plan)
            self._calibration = (key, prepare_calibration(plan, tokenizer))
        return self._calibration[1]

    def preview(self, n: int = 5) -> CalibrationPreview:
        """The first ``n`` calibration samples as the model will see them, and the set's summary."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise StateError(f"preview(n) takes a whole number of samples, not {n!r}.")
        return CalibrationPreview(self.calibration_set(), n)

    # -- running ----------------------------------------------------------------------------------

    def run(
        self,
        callbacks: Iterable[Listener] | None = None,
        *,
        progress: bool = True,
        evaluate: bool = False,
        eval_text: str | Sequence[str] | None = None,
    ) -> SessionResult:
        """Quantize with AWQ; returns (and keeps in ``s.result``) the result.

        ``callbacks`` receive every progress event; ``progress`` adds the default bar (a widget
        in notebooks, text in a terminal). ``evaluate`` measures perplexity before and after on
        held-out text (``eval_text``, else the dataset's validation or test split) afterwards.
        """
        with self._lock:
            if self._state == "running":
                raise StateError("A run is already going in this session; wait for it or cancel() it.")
            self._state = "running"
            self._cancel.clear()
            self.error = None
        listeners: list[Listener] = list(callbacks or [])
        bar = None
        result = None
        route_library_logs(self.library_log_level)
        try:
            plan = make_plan(self._settings, model_info=self._info(), raw_calibration=self._raw_calibration())
            self._plan = plan
            heldout = self._heldout(plan, eval_text) if evaluate else None  # fail before the run, not after
            if progress:
                from .progress_bar import ProgressBar

                bar = ProgressBar(plan.model.num_layers)
                listeners.append(bar)
            with library_bars_silenced():  # our events drive the progress; llm-compressor's own bars stay quiet
                result = SessionResult.from_run(execute(plan, listeners, cancel=self._cancel))
                if heldout is not None:
                    self._evaluate_after_run(result, plan, heldout)
        except (KeyboardInterrupt, RunCancelled) as exc:
            written = getattr(exc, "output_path", None) or (result.output_path if result is not None else None)
            if written:  # the interrupt came after the output was in place (during the evaluation, say)
                stopped = InterruptedAfterOutput(written)
                self.result = result
                if result is not None:
                    self._finish("done", None, bar)
                else:
                    self._finish("cancelled", stopped, bar)
                raise stopped from None
            self._finish("cancelled", exc, bar)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise CancelledError("The run was cancelled; no output was written. The session can run again.") from None
        except BaseException as exc:
            self._finish("failed", exc, bar)
            raise
        self.result = result
        self._finish("done", None, bar)
        return result

    def _evaluate_after_run(self, result: SessionResult, plan: Plan, texts: list[str]) -> None:
        """Evaluate a finished run; a failure here is reported, and the finished output stays valid."""
        try:
            self._evaluate_into(result, plan, texts)
        except KeyboardInterrupt:  # the output stays valid; the result says why it has no evaluation
            result.perplexity, result.layer_errors = None, None
            result.evaluation_error = "The evaluation was interrupted."
            raise
        except Exception as exc:  # noqa: BLE001 - the quantized model is written; do not lose it
            result.evaluation_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            warnings.warn(f"The run finished, but evaluating it failed: {result.evaluation_error}", stacklevel=3)

    def _finish(self, state: str, error: BaseException | None, bar: Any) -> None:
        if bar is not None:
            bar.close(ok=state == "done")
        with self._lock:
            self._state = state
            self.error = error

    def cancel(self) -> None:
        """Ask a running run to stop; it stops at the next grid point and writes nothing."""
        self._cancel.set()

    # -- afterwards ----------------------------------------------------------------------------

    def _require_result(self) -> SessionResult:
        if self.result is None:
            raise StateError("No finished run in this session yet; call run() first.")
        return self.result

    def plot(self, kind: str = "overview", **kwargs: Any):
        """A matplotlib Figure of the last run's statistics: overview, scales, ratios, losses, grid or clip."""
        from . import plots

        stats = self._require_result().stats
        figures: dict[str, Callable] = {
            "overview": plots.overview,
            "scales": plots.scale_distribution,
            "ratios": plots.best_ratio,
            "losses": plots.loss_comparison,
            "grid": plots.grid_curve,
            "clip": plots.clip_effect,
        }
        if kind not in figures:
            raise StateError(f"plot kind {kind!r} is unknown; choose one of {', '.join(figures)}.")
        return figures[kind](stats, **kwargs)

    def evaluate(self, text: str | Sequence[str] | None = None) -> dict[str, float]:
        """Perplexity of the unquantized and the quantized model on held-out text, and per-layer errors."""
        result = self._require_result()
        plan = self._plan
        assert plan is not None
        self._evaluate_into(result, plan, text)
        return dict(result.perplexity or {})

    def _heldout(self, plan: Plan, text: str | Sequence[str] | None) -> list[str]:
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            texts = [t for t in texts if isinstance(t, str) and t.strip()]
            if not texts:
                raise CalibrationDataError("The held-out text is empty; give some text to evaluate on.")
            return texts
        source = self._settings.calibration_dataset
        if isinstance(source, str) and not source.lower().endswith((".json", ".jsonl", ".txt")):
            for split in ("validation", "test"):
                try:
                    raw = read_source(source, split, self._settings.text_column, plan.token)
                except QwodelError:
                    continue
                if len(raw):
                    return [r for r in raw.rows if isinstance(r, str)][:2000]
        raise CalibrationDataError(
            "No held-out text: the calibration source has no validation or test split; "
            "pass text to evaluate(text=...) or run(evaluate=True, eval_text=...)."
        )

    def _evaluate_into(self, result: SessionResult, plan: Plan, text: str | Sequence[str] | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from .engine.evaluate import layer_output_errors, perplexity
        from .engine.run import load_model

        texts = self._heldout(plan, text)
        tokenizer = load_tokenizer(plan)
        seq = min(plan.seq_len, 1024)
        reference = load_model(plan)
        device = next(reference.parameters()).device
        quantized = AutoModelForCausalLM.from_pretrained(result.output_path, dtype=reference.dtype).to(device)
        try:
            result.perplexity = {
                "unquantized": perplexity(reference, tokenizer, texts, seq_len=seq),
                "quantized": perplexity(quantized, tokenizer, texts, seq_len=seq),
            }
            result.layer_errors = layer_output_errors(reference, quantized, tokenizer, texts, seq_len=seq)
        finally:
            del reference, quantized
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- display ------------------------------------------------------------------------------------

    def panel(self, **options: Any):
        """The widget panel over this session (:func:`qwodel_nb.panel`); display it, or end a cell with it."""
        from .widgets import open_panel

        return open_panel(self, **options)

    def __repr__(self) -> str:
        s = self._settings
        out = f", output={s.output!r}" if s.output else ""
        return f"Session(model={s.model!r}{out}, state={self._state!r})"

    def status(self) -> str:
        text = f"{self!r}"
        if self.error is not None and self._state in ("failed", "cancelled"):
            message = getattr(self.error, "message", None) or str(self.error) or type(self.error).__name__
            text += f": {message}"
        if self.result is not None:
            text += f"; last output {self.result.output_path}"
        return text
