"""What to lower after the GPU runs out of memory, and how to say so.

A run that hits CUDA out-of-memory is retried from the start (the model is reloaded: AWQ has
already changed the weights of the layers it finished) with one setting lowered:

0. where the plan kept llm-compressor's layer inputs on the GPU (``engine/pipeline_cache.py``),
   they go back to the CPU, llm-compressor's default: costs speed only, and gives back what the
   plan spent on speed before anything the user chose is touched;
1. ``batch_size``, halved down to 1: costs speed only;
2. where the whole model sat on the GPU, the placement: weights stay on the CPU and
   llm-compressor onloads one decoder layer at a time (speed only; taken first when the
   weights themselves did not fit while loading);
3. ``seq_len``, halved down to :data:`MIN_SEQ_LEN`: shorter calibration samples;
4. ``num_samples``, halved down to :data:`MIN_NUM_SAMPLES`: fewer calibration samples.

Values are halved from what the failed attempt really used (a batch size already lowered for
unequal sample lengths, the longest sample rather than a longer ``seq_len``), so every step
changes the memory the next attempt needs. When nothing is left to lower the run stops with a
:class:`~qwodel_nb.engine.errors.GpuOutOfMemoryError` naming the smallest settings it tried.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .autoconfig import Choice

MIN_SEQ_LEN = 128
MIN_NUM_SAMPLES = 8
WHOLE, LAYERED = "whole model on the GPU", "one layer at a time"


@dataclass(frozen=True)
class Sizes:
    """The settings one attempt really ran with."""

    batch_size: int
    seq_len: int
    num_samples: int
    placement: str | None = None  # WHOLE or LAYERED on a GPU; None on the CPU
    layer_inputs: str | None = None  # where the pipeline kept the layer inputs on a GPU: "gpu" or "cpu"

    def describe(self) -> str:
        text = f"batch_size={self.batch_size}, seq_len={self.seq_len}, num_samples={self.num_samples}"
        text += f", weights {self.placement}" if self.placement else ""
        return text + (f", layer inputs on the {self.layer_inputs.upper()}" if self.layer_inputs else "")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Step:
    """One back-off: the attempt that ran out of memory, and the setting lowered for the next."""

    attempt: int  # 1-based number of the attempt that failed
    phase: str  # where it ran out of memory: load_model, awq, save...
    setting: str  # layer_inputs, batch_size, placement, seq_len or num_samples
    old: Any
    new: Any
    tried: Sizes
    error: str  # the first sentence of the out-of-memory error

    def message(self) -> str:
        return (f"Out of GPU memory during {self.phase.replace('_', ' ')} with {self.tried.describe()}; "
                f"retrying with {self.setting} {self.old} -> {self.new}.")

    def as_dict(self) -> dict:
        return {"attempt": self.attempt, "phase": self.phase, "setting": self.setting, "old": self.old,
                "new": self.new, "tried": self.tried.as_dict(), "error": self.error}


def out_of_memory(exc: BaseException | None) -> BaseException | None:
    """The innermost CUDA out-of-memory error in ``exc``'s chain, or None."""
    import torch

    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower() if isinstance(exc, RuntimeError) else ""
        if isinstance(exc, torch.OutOfMemoryError) or ("out of memory" in text and "cuda" in text) or (
            "status_alloc_failed" in text  # cuBLAS/cuDNN could not get their workspace
        ):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def first_sentence(exc: BaseException) -> str:
    """The start of an error's text: whole sentences up to about 80 characters (CUDA's say what was asked for)."""
    text = " ".join(str(exc).split())
    end = 0
    while end < 80:
        following = text.find(". ", end + 1)
        if following < 0:
            end = len(text)
            break
        end = following + 1
    return text[: min(end, 240)].strip() or type(exc).__name__


def next_step(tried: Sizes, phase: str, attempt: int, error: str) -> Step | None:
    """The next setting to lower after ``tried`` ran out of memory in ``phase``; None when none is left."""
    def step(setting: str, old: Any, new: Any) -> Step:
        return Step(attempt, phase, setting, old, new, tried, error)

    if phase == "load_model" and tried.placement == WHOLE:
        return step("placement", WHOLE, LAYERED)
    if tried.layer_inputs == "gpu":
        return step("layer_inputs", "gpu", "cpu")
    if tried.batch_size > 1:
        return step("batch_size", tried.batch_size, max(1, tried.batch_size // 2))
    if tried.placement == WHOLE:
        return step("placement", WHOLE, LAYERED)
    if tried.seq_len > MIN_SEQ_LEN:
        return step("seq_len", tried.seq_len, max(MIN_SEQ_LEN, tried.seq_len // 2))
    if tried.num_samples > MIN_NUM_SAMPLES:
        return step("num_samples", tried.num_samples, max(MIN_NUM_SAMPLES, tried.num_samples // 2))
    return None


def apply_step(plan, step: Step):
    """A copy of ``plan`` with the step's setting lowered (or its placement changed)."""
    if step.setting == "layer_inputs":
        from .resources import plan_ram

        peak = plan.est_peak_gpu_bytes - plan.layer_inputs_bytes if plan.est_peak_gpu_bytes is not None else None
        moved = dataclasses.replace(plan, layer_inputs_on_gpu=False, est_peak_gpu_bytes=peak)
        moved.est_ram = plan_ram(moved)
        return moved
    if step.setting == "placement":
        gpu = plan.vram.calibration_gpu()
        return dataclasses.replace(plan, placement=f"weights on CPU, one layer at a time on GPU {gpu.index if gpu else 0}")
    reason = f"lowered from {step.old}: the GPU ran out of memory with {step.tried.describe()}"
    calibration = dataclasses.replace(plan.calibration, **{step.setting: Choice(step.new, "backoff", reason)})
    return dataclasses.replace(plan, calibration=calibration)


def exhausted_message(tried: Sizes, phase: str, steps: list[Step], error: str) -> str:
    lowered = f" after {len(steps)} back-off step{'s' if len(steps) != 1 else ''}" if steps else ""
    return (
        f"Out of GPU memory during {phase.replace('_', ' ')} even with {tried.describe()}, the smallest settings "
        f"tried{lowered} ({error}); free the GPU memory other processes hold (nvidia-smi), lower num_samples or "
        "seq_len below those, or use a GPU with more memory."
    )
