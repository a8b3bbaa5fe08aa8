"""Disk space and CPU memory a run needs, estimated from shapes before any weight is loaded.

Disk: the estimated output (packed 4-bit weights, scales, zero points, the unquantized layers),
plus 10% and 64 MiB for the tokenizer, recipe, statistics and file-system slack, must fit in
the free space of the file system that will hold the output. The old output of an overwrite
stays until the new one is complete, so its space is not counted as free.

CPU memory: what llm-compressor 0.14 keeps in host memory during calibration, counted from the
model's shapes and the calibration tokens (``per`` = bytes of the compute dtype):

* the weights, when they live on the CPU (a CPU run, or layers onloaded one at a time):
  ``parameters x per``;
* the sequential pipeline's cache of every sample's layer inputs, unless a GPU run keeps it on
  the GPU (``engine/pipeline_cache.py``): the inputs and the outputs of one decoder layer plus the
  rotary cos/sin tables and the 4-D attention mask, ``tokens x (2 hidden + 2 head_dim + seq_len)
  x per``, and the token ids and 2-D mask, ``tokens x 16``;
* on a CPU run, AWQ's own caches, which live on the compute device: the inputs of every parent
  module of one layer (attention, o_proj, MLP, down_proj) and two sets of outputs,
  ``tokens x (5 hidden + intermediate) x per``, and one batch through a layer: its activations,
  the attention scores and the logits;
* the compressed copy of the weights made while saving: the estimated output size.

The estimate errs high (every cache at its largest at once). The check compares it with the
memory the operating system reports available now; the plan shows the parts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from .errors import ResourceError
from .pipeline_cache import layer_inputs_bytes
from .vram import format_bytes

MIB = 1024**2
DISK_SLACK_BYTES = 64 * MIB
DISK_MARGIN = 1.10


def _existing_ancestor(path: str) -> str:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


# ----------------------------------------------------------------------------- disk


def free_disk_bytes(path: str) -> int | None:
    """Free bytes on the file system that holds (or will hold) ``path``; None if unknown."""
    try:
        return shutil.disk_usage(_existing_ancestor(path)).free
    except OSError:
        return None


def disk_needed_bytes(est_output_bytes: int) -> int:
    return int(est_output_bytes * DISK_MARGIN) + DISK_SLACK_BYTES


def check_disk(output_path: str, est_output_bytes: int) -> None:
    """Raise :class:`ResourceError` when the output's file system has too little free space."""
    free = free_disk_bytes(output_path)
    need = disk_needed_bytes(est_output_bytes)
    if free is not None and free < need:
        where = _existing_ancestor(os.path.dirname(os.path.abspath(output_path)))
        raise ResourceError(
            f"Not enough free disk space for the output: it needs about {format_bytes(need)} "
            f"(estimated output {format_bytes(est_output_bytes)} plus margin) but only {format_bytes(free)} "
            f"is free under {where!r}; free some space or choose an output folder on another disk."
        )


# ----------------------------------------------------------------------------- memory


def available_ram_bytes() -> int | None:
    """Memory the operating system can give this process now (psutil, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is installed with accelerate
        pass
    try:  # pragma: no cover
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover
        pass
    return None  # pragma: no cover


@dataclass(frozen=True)
class RamEstimate:
    """Host memory a run needs, by part, for a given number of calibration tokens."""

    parts: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    exact_tokens: bool = False  # counted after tokenizing, rather than num_samples x seq_len

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items() if size)
        return f"about {format_bytes(self.total)} ({shown})"


def estimate_ram(plan, tokens: int, batch_tokens: int) -> RamEstimate:
    """Host memory for ``plan`` calibrating on ``tokens`` tokens in batches of ``batch_tokens``.

    With several processes (``plan.gpus`` > 1) it is the whole host's: each process holds its own
    copy of weights kept on the CPU and its own batch, the caches split the tokens between them,
    and rank 0 alone saves.
    """
    from .model_info import TORCH_DTYPE_BYTES

    info = plan.model
    per = TORCH_DTYPE_BYTES.get(plan.compute_dtype, 4)
    text = info.config.get_text_config() if hasattr(info.config, "get_text_config") else info.config
    hidden = info.hidden_size or 4096
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    heads = getattr(text, "num_attention_heads", None) or max(hidden // 128, 1)
    vocab = getattr(text, "vocab_size", None) or 0
    on_cpu = plan.device == "cpu"
    weights_on_cpu = on_cpu or not plan.placement.startswith("whole model")
    seq = max(plan.seq_len, 1)
    processes = max(getattr(plan, "gpus", 1), 1)
    copies = "" if processes == 1 else f" (x{processes} processes)"
    parts = {
        "weights on the CPU" + copies: processes * info.param_count * per if weights_on_cpu else 0,
        "layer cache": 0 if plan.layer_inputs_on_gpu else layer_inputs_bytes(info.config, per, tokens, seq),
        "AWQ cache": tokens * (5 * hidden + inter) * per if on_cpu else 0,
        "one batch" + copies: processes * batch_tokens * ((3 * inter + 4 * hidden + vocab) * per + heads * seq * per)
        if on_cpu else 0,
        "saving": plan.est_output_bytes,
    }
    return RamEstimate(parts=parts, tokens=tokens)


def plan_ram(plan) -> RamEstimate:
    """:func:`estimate_ram` for a plan before the samples are tokenized: an upper bound, every
    sample at ``plan.seq_len`` tokens (the run checks again with the real token count)."""
    return estimate_ram(plan, plan.num_samples * plan.seq_len, plan.batch_size * plan.seq_len)


def check_ram(estimate: RamEstimate, available: int | None = None) -> None:
    """Raise :class:`ResourceError` when ``estimate`` exceeds the memory available now."""
    available = available_ram_bytes() if available is None else available
    if available is None or estimate.total <= available:
        return
    raise ResourceError(
        f"Not enough CPU memory: the run needs {estimate.describe()} for {estimate.tokens} calibration tokens, "
        f"but only {format_bytes(available)} is available; lower num_samples or seq_len "
        "(CLI: --num-samples, --seq-len), or close other programs."
    )
