"""One quantization run, from a plan to a finished output folder.

The steps, each timed: load the tokenizer and tokenize the calibration samples; load the model;
calibrate with AWQ and apply the W4A16 scheme (llm-compressor); save into a staged folder with
the tokenizer, the recipe and a summary; move the folder into place.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import resource
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from . import ranks
from .awq import build_recipe, run_oneshot
from .backoff import LAYERED, WHOLE, Sizes, apply_step, exhausted_message, first_sentence, next_step, out_of_memory
from .calibration import CalibrationSet, tokenize
from .errors import (
    GpuOutOfMemoryError,
    InterruptedAfterOutput,
    ModelNotFoundError,
    QwodelError,
    RunCancelled,
    UnsupportedModelError,
)
from .output import STATS_NAME, SUMMARY_NAME, folder_bytes, staged_output, write_json
from .plan import Plan
from .progress import Emitter, Listener, OutOfMemoryRetry, PhaseFinished, PhaseStarted, RunFinished
from .release import release
from .resources import check_ram, estimate_ram
from .secrets import call_translating, redact
from .stats import Stats
from .test_points import test_point
from .versions import library_versions

log = logging.getLogger("qwodel_nb.engine")


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
    backoff: list[dict] = field(default_factory=list)  # out-of-memory back-off steps (backoff.Step.as_dict)

    @property
    def compression_ratio(self) -> float:
        return self.size_before_bytes / self.size_after_bytes if self.size_after_bytes else float("nan")


def load_tokenizer(plan: Plan) -> Any:
    from transformers import AutoTokenizer

    def failed(exc: Exception) -> ModelNotFoundError:
        text = redact(str(exc), plan.token).strip().splitlines()
        return ModelNotFoundError(
            f"Could not load the tokenizer of {plan.model.source!r} ({text[0][:160] if text else type(exc).__name__}); "
            "the model folder needs its tokenizer files."
        )

    return call_translating(
        lambda: AutoTokenizer.from_pretrained(
            _model_ref(plan),
            token=plan.token.reveal() if plan.token else None,
            trust_remote_code=plan.settings.trust_remote_code,
        ),
        failed,
    )


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
    if plan.placement.startswith("whole model on"):
        # one process per GPU in a distributed run: each loads onto its own (torchrun's LOCAL_RANK)
        kwargs["device_map"] = f"cuda:{torch.cuda.current_device() if ranks.is_distributed() else 0}"

    def failed(exc: Exception) -> BaseException:
        if not isinstance(exc, (OSError, ValueError)):
            return exc  # out of memory and the like: handled by the caller as they are
        text = redact(str(exc), plan.token).strip().splitlines()
        return UnsupportedModelError(
            f"Could not load the weights of {plan.model.source!r} ({text[0][:160] if text else type(exc).__name__})."
        )

    return call_translating(lambda: AutoModelForCausalLM.from_pretrained(_model_ref(plan), **kwargs), failed)


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


def quantize_model(plan: Plan, model: Any, tokenizer: Any, calibration: CalibrationSet, emitter: Emitter | None = None) -> Stats:
    """AWQ + W4A16 on ``model`` in place, then cast to the dtype it will be saved in; returns the statistics.

    In a distributed run this process calibrates on its share of the batches; the statistics
    and the model come out the same on every rank.
    """
    import torch

    from .awq_capture import AWQModifier
    from .weight_qparams import QuantizationModifier

    awq_cls: Any = AWQModifier
    if plan.layout.mappings.source == "your mappings":
        awq_cls = functools.partial(AWQModifier, mappings=list(plan.layout.mappings.mappings))
    recipe = build_recipe(
        group_size=plan.layout.group_size,
        symmetric=plan.settings.symmetric,
        ignore=plan.layout.ignore,
        awq_cls=awq_cls,
        clip=plan.settings.clip,
        quant_cls=QuantizationModifier if plan.settings.awq_search == "fast" else None,
    )
    capture = recipe[0].observe(emitter, plan.model.num_layers, search=plan.settings.awq_search, clip=plan.settings.clip)
    run_oneshot(model, tokenizer, calibration.dataloader(ranks.rank(), ranks.world_size()), recipe,
                activations_on_device=plan.layer_inputs_on_gpu)
    if plan.save_dtype != plan.compute_dtype:
        model.to(getattr(torch, plan.save_dtype))
    return Stats(capture.records, search=capture.search_summary, clips=capture.clips)


def save_output(plan: Plan, model: Any, tokenizer: Any, summary: dict, started: float, stats: Stats,
                on_published: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Write the compressed model into a staged folder and move it into place; returns (path, weight bytes).

    The summary is the last file written into the staged folder, with the save and total times
    already in it, so the published folder is never changed afterwards. ``on_published(path)``
    runs the moment the folder is in place (see :func:`~qwodel_nb.engine.output.staged_output`).
    """
    assert plan.output_path is not None
    t = time.perf_counter()
    with staged_output(plan.output_path, plan.settings.overwrite, on_published) as tmp, warnings.catch_warnings():
        # transformers warns about "offloaded modules" for every model llm-compressor dispatched;
        # the weights are on the CPU or GPU already and the warning asks nothing of the user.
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        model.save_pretrained(tmp, save_compressed=True)
        test_point("weights")
        tokenizer.save_pretrained(tmp)
        test_point("tokenizer")
        stats.to_json(os.path.join(tmp, STATS_NAME))
        size_after = folder_bytes(tmp, ".safetensors")
        before = summary["sizes"]["before_bytes"]
        summary["sizes"]["after_bytes"] = size_after
        summary["sizes"]["compression_ratio"] = round(before / size_after, 3) if size_after else None
        summary["timings"]["save_s"] = time.perf_counter() - t
        summary["timings"]["total_s"] = time.perf_counter() - started
        write_json(os.path.join(tmp, SUMMARY_NAME), summary)
    return plan.output_path, size_after


class _Attempt:
    """Where one attempt is and what it really ran with, for the back-off after it fails."""

    def __init__(self, number: int, rank: int = 0, backend: str | None = None):
        self.number = number
        self.phase = "calibration_data"
        self.sizes: Sizes | None = None
        self.rank = rank
        self.backend = backend
        self.output_path: str | None = None  # set the moment the output is in place

    def published(self, path: str) -> None:
        self.output_path = path


def _placement_kind(plan: Plan) -> str | None:
    if plan.device == "cpu":
        return None
    return WHOLE if plan.placement.startswith("whole model") else LAYERED


def _layer_inputs_kind(plan: Plan) -> str | None:
    if plan.device == "cpu":
        return None
    return "gpu" if plan.layer_inputs_on_gpu else "cpu"


def _sizes(plan: Plan, calibration: CalibrationSet | None) -> Sizes:
    where = _placement_kind(plan), _layer_inputs_kind(plan)
    if calibration is None:
        return Sizes(plan.batch_size, plan.seq_len, plan.num_samples, *where)
    longest = max(calibration.lengths, default=plan.seq_len)
    return Sizes(calibration.batch_size, min(plan.seq_len, longest), calibration.num_samples, *where)


def _check_rank_shares(calibration: CalibrationSet, world: int) -> None:
    """Every process of a distributed run needs at least one batch to calibrate on."""
    batches = len(calibration.batches())
    if world > 1 and batches < world:
        from .errors import CalibrationDataError

        raise CalibrationDataError(
            f"{calibration.num_samples} calibration samples in batches of {calibration.batch_size} make {batches} "
            f"batch(es), fewer than the {world} GPUs: each GPU needs one; raise num_samples or lower batch_size or gpus."
        )


@contextlib.contextmanager
def _phase(emitter: Emitter, timings: dict[str, float], name: str, attempt: _Attempt) -> Iterator[None]:
    attempt.phase = name
    t = time.perf_counter()
    emitter.emit(PhaseStarted, phase=name)
    yield
    timings[f"{name}_s"] = time.perf_counter() - t
    emitter.emit(PhaseFinished, phase=name, duration_s=timings[f"{name}_s"])


def execute(plan: Plan, listeners: Iterable[Listener] = (), cancel: Any = None) -> RunResult:
    """Run ``plan`` to a finished output folder, sending progress events to ``listeners``.

    ``cancel`` (a ``threading.Event``) stops the run at the next event once set, raising
    :class:`~qwodel_nb.engine.errors.RunCancelled`; nothing is left in the output's place.
    When the GPU runs out of memory the run starts again with one setting lowered
    (:mod:`~qwodel_nb.engine.backoff`), each step sent as an ``OutOfMemoryRetry`` event, logged and
    kept in the summary; after any failure the memory the attempt held is given back.
    """
    if plan.gpus > 1:  # one process per GPU under torchrun; events, errors and the result come back here
        from .distributed import run_distributed

        return run_distributed(plan, listeners, cancel)
    emitter = Emitter(listeners, cancel)
    steps: list = []
    tokenizers: dict[str, Any] = {}
    number = 0
    while True:
        number += 1
        attempt = _Attempt(number)
        try:
            return _attempt(plan, emitter, attempt, steps, tokenizers)
        except BaseException as exc:
            if attempt.output_path is not None:  # the output is complete: only the tidying after it stopped
                release(exc, keep_text=False)
                if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, InterruptedAfterOutput):
                    raise InterruptedAfterOutput(attempt.output_path) from None
                raise
            interrupted = isinstance(exc, (KeyboardInterrupt, RunCancelled))
            oom = None if interrupted else out_of_memory(exc)
            release(exc, keep_text=not (interrupted or oom is not None or isinstance(exc, QwodelError)))
            if oom is None:
                raise
            tried = attempt.sizes or _sizes(plan, None)
            error = first_sentence(oom)
            step = next_step(tried, attempt.phase, number, error)
            if step is None:
                raise GpuOutOfMemoryError(exhausted_message(tried, attempt.phase, steps, error)) from None
            steps.append(step)
            log.warning("qwodel: %s", step.message())
            plan = apply_step(plan, step)
            emitter.emit(OutOfMemoryRetry, attempt=number, phase=step.phase, setting=step.setting,
                         old=step.old, new=step.new, message=step.message())


def _attempt(plan: Plan, emitter: Emitter, attempt: _Attempt, steps: list, tokenizers: dict) -> RunResult | None:
    """One attempt of the run. In a distributed run (``engine/worker.py``) every rank calibrates,
    then the process group is closed and rank 0 alone saves; the other ranks return None."""
    import torch

    timings: dict[str, float] = {}
    started = emitter.started
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    with _phase(emitter, timings, "calibration_data", attempt):
        if "tokenizer" not in tokenizers:
            tokenizers["tokenizer"] = load_tokenizer(plan)
        tokenizer = tokenizers["tokenizer"]
        calibration = prepare_calibration(plan, tokenizer)
        attempt.sizes = _sizes(plan, calibration)
        _check_rank_shares(calibration, ranks.world_size())
        longest = max(calibration.lengths, default=0)
        # The last check before any weight is loaded: host memory for the real token count.
        check_ram(estimate_ram(plan, calibration.total_tokens, calibration.batch_size * longest))
    with _phase(emitter, timings, "load_model", attempt):
        model = load_model(plan)
    with _phase(emitter, timings, "awq", attempt):
        stats = quantize_model(plan, model, tokenizer, calibration, emitter)

    peak_gpu = torch.cuda.max_memory_allocated() if plan.device == "cuda" else None
    world = ranks.world_size()
    if world > 1:
        if peak_gpu is not None:
            peak_gpu = int(ranks.agree_max(peak_gpu))  # the fullest GPU's peak
        ranks.leave_process_group()  # the model is the same on every rank: rank 0 saves it alone
        if attempt.rank != 0:
            return None
    calibration_summary = calibration.summary()
    if world > 1:
        calibration_summary["batches_per_rank"] = [len(calibration.rank_batches(r, world)) for r in range(world)]
    backoff = [s.as_dict() for s in steps]
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
        "gpus": plan.gpus,
        "distributed": None if world == 1 else {"world_size": world, "backend": attempt.backend},
        "attempts": attempt.number,
        "backoff": backoff,
        "versions": library_versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    attempt.phase = "save"
    emitter.emit(PhaseStarted, phase="save")
    path, size_after = save_output(plan, model, tokenizer, summary, started, stats, attempt.published)
    emitter.cancel = None  # the output is in place: there is nothing left for a cancel to stop
    emitter.emit(PhaseFinished, phase="save", duration_s=timings["save_s"])
    del model
    release()  # llm-compressor's session still holds the model; give its memory back now
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
        backoff=backoff,
    )
