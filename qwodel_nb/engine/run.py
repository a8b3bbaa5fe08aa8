"""One quantization run, from a plan to a finished output folder.

The steps, each timed: load the tokenizer and tokenize the calibration samples; load the model;
calibrate with AWQ and apply the W4A16 scheme (llm-compressor); save into a staged folder with
the tokenizer, the recipe and a summary; move the folder into place.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from .awq import build_recipe, run_oneshot
from .calibration import CalibrationSet, tokenize
from .errors import ModelNotFoundError, UnsupportedModelError
from .output import STATS_NAME, SUMMARY_NAME, folder_bytes, staged_output, write_json
from .plan import Plan
from .progress import Emitter, Listener, PhaseFinished, PhaseStarted, RunFinished
from .secrets import redact
from .stats import Stats
from .versions import library_versions


@dataclass
class RunResult:
    output_path: str
    timings: dict[str, float]
    calibration: dict
    size_before_bytes: int
    size_after_bytes: int
    peak_gpu_bytes: int | None
    peak_rss_bytes: int
    summary: dict = field(repr=False)
    stats: Stats = field(default_factory=Stats, repr=False)

    @property
    def compression_ratio(self) -> float:
        return self.size_before_bytes / self.size_after_bytes if self.size_after_bytes else float("nan")


def load_tokenizer(plan: Plan) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            _model_ref(plan),
            token=plan.token.reveal() if plan.token else None,
            trust_remote_code=plan.settings.trust_remote_code,
        )
    except Exception as exc:
        text = redact(str(exc), plan.token).strip().splitlines()
        raise ModelNotFoundError(
            f"Could not load the tokenizer of {plan.model.source!r} ({text[0][:160] if text else type(exc).__name__}); "
            "the model folder needs its tokenizer files."
        ) from None


def prepare_calibration(plan: Plan, tokenizer: Any) -> CalibrationSet:
    return tokenize(
        plan.raw_calibration,
        tokenizer,
        seq_len=plan.seq_len,
        num_samples=plan.num_samples,
        batch_size=plan.batch_size,
        seed=plan.settings.seed,
    )


def _model_ref(plan: Plan) -> str:
    return os.path.expanduser(plan.model.source) if plan.model.is_local else plan.model.source


def load_model(plan: Plan) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, plan.compute_dtype),
        "token": plan.token.reveal() if plan.token else None,
        "trust_remote_code": plan.settings.trust_remote_code,
    }
    if plan.placement.startswith("whole model on GPU"):
        kwargs["device_map"] = "cuda:0"
    try:
        return AutoModelForCausalLM.from_pretrained(_model_ref(plan), **kwargs)
    except (OSError, ValueError) as exc:
        text = redact(str(exc), plan.token).strip().splitlines()
        raise UnsupportedModelError(
            f"Could not load the weights of {plan.model.source!r} ({text[0][:160] if text else type(exc).__name__})."
        ) from None


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


def quantize_model(plan: Plan, model: Any, tokenizer: Any, calibration: CalibrationSet, emitter: Emitter | None = None) -> Stats:
    """AWQ + W4A16 on ``model`` in place, then cast to the dtype it will be saved in; returns the statistics."""
    import torch

    from .awq_capture import AWQModifier

    recipe = build_recipe(
        group_size=plan.layout.group_size,
        symmetric=plan.settings.symmetric,
        ignore=plan.layout.ignore,
        awq_cls=AWQModifier,
        clip=plan.settings.clip,
    )
    capture = recipe[0].observe(emitter, plan.model.num_layers, search=plan.settings.awq_search, clip=plan.settings.clip)
    run_oneshot(model, tokenizer, calibration.dataloader(), recipe)
    if plan.save_dtype != plan.compute_dtype:
        model.to(getattr(torch, plan.save_dtype))
    return Stats(capture.records, search=capture.search_summary, clips=capture.clips)


def save_output(plan: Plan, model: Any, tokenizer: Any, summary: dict, started: float, stats: Stats) -> tuple[str, int]:
    """Write the compressed model into a staged folder and move it into place; returns (path, weight bytes).

    The summary is the last file written into the staged folder, with the save and total times
    already in it, so the published folder is never changed afterwards.
    """
    assert plan.output_path is not None
    t = time.perf_counter()
    with staged_output(plan.output_path, plan.settings.overwrite) as tmp, warnings.catch_warnings():
        # transformers warns about "offloaded modules" for every model llm-compressor dispatched;
        # the weights are on the CPU or GPU already and the warning asks nothing of the user.
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        model.save_pretrained(tmp, save_compressed=True)
        tokenizer.save_pretrained(tmp)
        stats.to_json(os.path.join(tmp, STATS_NAME))
        size_after = folder_bytes(tmp, ".safetensors")
        before = summary["sizes"]["before_bytes"]
        summary["sizes"]["after_bytes"] = size_after
        summary["sizes"]["compression_ratio"] = round(before / size_after, 3) if size_after else None
        summary["timings"]["save_s"] = time.perf_counter() - t
        summary["timings"]["total_s"] = time.perf_counter() - started
        write_json(os.path.join(tmp, SUMMARY_NAME), summary)
    return plan.output_path, size_after


@contextlib.contextmanager
def _phase(emitter: Emitter, timings: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    emitter.emit(PhaseStarted, phase=name)
    yield
    timings[f"{name}_s"] = time.perf_counter() - t
    emitter.emit(PhaseFinished, phase=name, duration_s=timings[f"{name}_s"])


def execute(plan: Plan, listeners: Iterable[Listener] = (), cancel: Any = None) -> RunResult:
    """Run ``plan`` to a finished output folder, sending progress events to ``listeners``.

    ``cancel`` (a ``threading.Event``) stops the run at the next event once set, raising
    :class:`~qwodel_nb.engine.errors.RunCancelled`; nothing is left in the output's place.
    """
    import torch

    emitter = Emitter(listeners, cancel)
    timings: dict[str, float] = {}
    started = emitter.started
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    with _phase(emitter, timings, "calibration_data"):
        tokenizer = load_tokenizer(plan)
        calibration = prepare_calibration(plan, tokenizer)
    with _phase(emitter, timings, "load_model"):
        model = load_model(plan)
    with _phase(emitter, timings, "awq"):
        stats = quantize_model(plan, model, tokenizer, calibration, emitter)

    peak_gpu = torch.cuda.max_memory_allocated() if plan.device == "cuda" else None
    calibration_summary = calibration.summary()
    summary = {
        "tool": "qwodel-nb",
        "backend": "awq",
        "format": "int4",
        "scheme": "W4A16" if plan.settings.symmetric else "W4A16_ASYM",
        "settings": plan.settings.public_dict(),
        "plan": plan.as_dict(),
        "calibration": calibration_summary,
        "awq": stats.overview(),
        "timings": timings,
        "sizes": {"before_bytes": plan.model.weight_bytes},
        "peak_gpu_bytes": peak_gpu,
        "versions": library_versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    emitter.emit(PhaseStarted, phase="save")
    path, size_after = save_output(plan, model, tokenizer, summary, started, stats)
    emitter.emit(PhaseFinished, phase="save", duration_s=timings["save_s"])
    del model
    if plan.device == "cuda":
        torch.cuda.empty_cache()
    emitter.emit(RunFinished, output_path=path)
    return RunResult(
        output_path=path,
        timings=timings,
        calibration=calibration_summary,
        size_before_bytes=plan.model.weight_bytes,
        size_after_bytes=size_after,
        peak_gpu_bytes=peak_gpu,
        peak_rss_bytes=_peak_rss_bytes(),
        summary=summary,
        stats=stats,
    )
