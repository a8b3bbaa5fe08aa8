"""Fused attention for the fast search's forward passes of an attention parent.

llm-compressor calibrates under eager attention (``calibration_forward_context``): every pass of
an attention parent writes, masks and soft-maxes the whole ``batch x heads x T x T`` score matrix,
in float32 for the softmax. The stock search runs that pass once per grid point; on an H200 it is
most of the GPU time of SmolLM2's q/k/v mappings (bench/RESULTS.md, "CUDA graphs, measured before
building"), and its memory is what keeps several grid points from sharing a pass.

qwodel's calibration batches are not padded, so each cached mask is the plain causal one. Then
PyTorch's ``scaled_dot_product_attention`` with ``is_causal`` computes the same attention with
fused kernels and memory linear in the tokens. :func:`plan` says whether a parent's passes may use
it; :class:`FusedAttention` switches the attention modules' configs to transformers' ``"sdpa"``
implementation for the duration of a pass and drops the mask tensor from the arguments.

The arithmetic is not eager attention's bit for bit (the same bf16 products, rounded in another
order), so the search does three things when it uses this:

* it recomputes the reference outputs with the original weights under the same attention, so a
  loss measures the candidate weights' error alone, not the difference of two attention kernels;
* it compares those references with llm-compressor's eager ones (:func:`references_agree`): a
  relative difference above ``REFERENCE_TOLERANCE`` means the swap changed more than rounding (an
  attention that reads the mask by itself, say), and that mapping runs eagerly, as stock does;
* it evaluates the points near the best fused loss again under eager attention, with stock's
  arithmetic (:func:`to_confirm`), and chooses among those: on flat loss curves the rounding
  alone would reorder near-ties (bench/RESULTS.md: 75 of 96 choices kept without this step on
  an 8B-shaped model with random weights).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

#: largest relative difference (Frobenius) between the fused and the eager reference outputs
#: accepted as rounding. bf16 rounds to 2**-8 relative; a mask lost or misread changes outputs
#: by tens of percent.
REFERENCE_TOLERANCE = 2e-2
#: bytes a fused-attention pass holds per token, in units of the parent's output row
#: (hidden size x element size): measured, the attention module's call adds 4.7 rows per token
#: (SmolLM2, 4 grid points per pass) and 4.5 (Llama-3-8B's shapes) with its projections, rotary
#: temporaries and output (bench/gpu_attention_probe.py); with the repeated input and the loss's
#: difference, 6.7. The tenth session lowered it from a count of 10, which left a third of the
#: budget unused and made SmolLM2's 20 grid points take 5 passes instead of 4
PASS_ROW_UNITS = 7
#: points whose fused loss is within this share of the best fused loss are evaluated again under
#: eager attention. The two attentions' losses differed by at most 0.77% on SmolLM2 and on an
#: 8B-shaped model (bench/RESULTS.md); stock's choice is among the confirmed points while they
#: differ by less than half this margin
CONFIRM_WITHIN = 0.02
#: attention options that scaled_dot_product_attention leaves out (logit soft-capping,
#: attention sinks): a module carrying one of them keeps eager attention
_UNSUPPORTED = ("attn_logit_softcapping", "sinks")


@functools.lru_cache(maxsize=None)
def _uses_interface(cls: type) -> bool:
    """Whether ``cls.forward`` picks its attention from transformers' interface table, so that
    the config's ``_attn_implementation`` decides which one runs."""
    try:
        return "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def attention_modules(parent: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention modules inside ``parent`` whose implementation the config decides."""
    return [m for m in parent.modules() if hasattr(m, "config") and _uses_interface(type(m))]


def _causal(mask: Any, tokens: int) -> bool:
    """Whether a cached mask is the plain causal mask of ``tokens`` tokens for every sample: 0
    (or True) on and below the diagonal, the dtype's lowest value (or False) above it."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[-2:]) != (tokens, tokens):
        return False
    below = torch.ones(tokens, tokens, dtype=torch.bool, device=mask.device).tril().expand_as(mask)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, below))
    if not mask.dtype.is_floating_point:
        return False
    allowed = mask == 0
    blocked = mask <= torch.finfo(mask.dtype).min  # transformers writes the lowest value; -inf is the same
    return bool(torch.equal(allowed, below) and torch.equal(blocked, ~below))


@dataclass
class AttentionSwitch:
    """Sets the attention implementation of some modules' configs for the duration of a pass."""

    configs: list[Any]
    implementation: str

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = [(config, config._attn_implementation) for config in self.configs]
        try:
            for config, _ in saved:
                config._attn_implementation = self.implementation
            yield
        finally:
            for config, previous in saved:
                config._attn_implementation = previous


def configs_of(modules: list[torch.nn.Module]) -> list[Any]:
    """The modules' configs, each once (modules of one model share theirs)."""
    configs: list[Any] = []
    for module in modules:
        if all(module.config is not c for c in configs):
            configs.append(module.config)
    return configs


@dataclass
class FusedAttention(AttentionSwitch):
    """Runs a parent's attention modules through ``scaled_dot_product_attention`` with ``is_causal``."""

    implementation: str = "sdpa"

    @staticmethod
    def arguments(arguments: dict[str, Any]) -> dict[str, Any]:
        """The cached arguments without the mask tensor (the fused kernel makes it causal itself)."""
        return {**arguments, "attention_mask": None}


def plan(parent: torch.nn.Module, batches: list[dict[str, Any]]) -> FusedAttention | None:
    """Fused attention for this parent's passes, or None where it would not compute eager's
    attention: no attention module that takes its implementation from the config, an option
    scaled_dot_product_attention leaves out, or a cached mask other than the plain causal one."""
    modules = attention_modules(parent)
    if not modules or not batches:
        return None
    if any(getattr(m, name, None) is not None or getattr(m.config, name, None) is not None
           for m in modules for name in _UNSUPPORTED):
        return None
    for arguments in batches:
        first = next(iter(arguments.values()))
        if not isinstance(first, torch.Tensor) or first.dim() != 3 or not _causal(arguments.get("attention_mask"), first.shape[1]):
            return None
    return FusedAttention(configs_of(modules))


def relative_difference(fused: list[torch.Tensor], eager: list[torch.Tensor]) -> float:
    """Relative Frobenius difference of the fused references from the eager ones, over all batches
    (inf if either is not finite or they differ in shape)."""
    if len(fused) != len(eager) or any(a.shape != b.shape for a, b in zip(fused, eager)):
        return float("inf")
    sums = torch.zeros(2, dtype=torch.float64, device=fused[0].device if fused else "cpu")
    for a, b in zip(fused, eager):
        b = b.to(a.device)
        sums[0] += (a.float() - b.float()).pow(2).sum().double()
        sums[1] += b.float().pow(2).sum().double()
    diff, norm = sums.tolist()  # one read for the mapping
    if not (math.isfinite(diff) and math.isfinite(norm)):
        return float("inf")
    return math.sqrt(diff / norm) if norm > 0 else (0.0 if diff == 0 else float("inf"))


def references_agree(fused: list[torch.Tensor], eager: list[torch.Tensor]) -> bool:
    """Whether the fused references differ from the eager ones by rounding only."""
    return relative_difference(fused, eager) <= REFERENCE_TOLERANCE


def to_confirm(losses: list[float]) -> list[int]:
    """The grid points to evaluate again under eager attention: those whose fused loss is within
    ``CONFIRM_WITHIN`` of the best (all of them if no loss is finite)."""
    finite = [loss for loss in losses if math.isfinite(loss)]
    if not finite:
        return list(range(len(losses)))
    bound = min(finite) * (1 + CONFIRM_WITHIN)
    return [i for i, loss in enumerate(losses) if math.isfinite(loss) and loss <= bound]
