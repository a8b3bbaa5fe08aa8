"""Output-aware weight clipping after AWQ's smoothing, as in the original AWQ method.

The AWQ paper's code (llm-awq, and AutoAWQ after it) searches, after scaling, a clipping range
for every weight group: shrink the group's range by a factor, quantize, and keep the factor with
the least error in the group's contribution to the layer's output on calibration inputs.
llm-compressor 0.14 leaves this step out; its 4-bit scheme then takes each group's plain min/max.

How it is done here, for one Linear layer with group size ``k``:

* **Inputs as per-group Gram matrices.** A hook on the layer adds ``X_g^T X_g`` (``k x k``, one per
  group of input columns, float32) for every calibration batch, over all tokens. The error of a
  group's candidate weights ``Wq`` for output row ``o`` is then ``d^T G_g d`` with ``d = Wq - W``:
  the squared contribution error summed over the tokens, without keeping any activation.
  Storage is ``in_features * k`` floats per layer (3.5 MiB for a 14336-wide layer).
* **After smoothing.** AWQ multiplies a balance layer's input columns by its scales ``s`` and
  divides its inputs by them, so the Gram matrices recorded before smoothing become
  ``G / (s s^T)`` and the weight is read from the layer after smoothing.
* **Candidates.** Each group's range ``[min, max]`` shrinks to ``[r min, r max]`` for
  ``r = 1, 0.95, ..., 0.55`` (llm-awq's grid: 20 steps, up to half of the range), quantized with
  compressed-tensors' own ``calculate_qparams``/``fake_quantize``, all ratios at once.
* **Applied by clamping** each group to its chosen range, in place. The W4A16 scheme's min-max
  observer then sees exactly that range, so the saved scales and zero points are the clipped
  ones, with llm-compressor's own code computing them.

The error measured is the per-group contribution error of the original method (cross-group
terms are left out, as there); it is reported per layer, before (``r = 1``) and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .awq_search import gpu_working_budget, quantize_with_range

#: shrink factors tried: 1.0 down to 0.55 (llm-awq: n_grid 20, max_shrink 0.5)
CLIP_RATIOS = tuple(1.0 - i / 20 for i in range(10))
CLIP_MODES = ("none", "observer", "search")


@dataclass
class ClipResult:
    name: str
    mean_ratio: float  # over groups
    clipped_share: float  # groups with a ratio below 1
    error_before: float  # mean squared contribution error per output element, r = 1
    error_after: float
    ratios: torch.Tensor  # [out, groups], on the CPU


class GramAccumulator:
    """Per-group ``X^T X`` of one Linear's inputs, summed over calibration batches.

    Each batch's increment is computed in float32 and summed in float64: the sum then does not
    depend on the order of the batches, so a run split over several GPUs (each summing its own
    batches, then all-reduced) gets the float32 Gram matrices of a one-GPU run, and near-tied
    clip ratios are decided the same way.
    """

    def __init__(self, in_features: int, group_size: int, device: torch.device):
        self.group_size = group_size
        self.groups = in_features // group_size
        self.gram = torch.zeros(self.groups, group_size, group_size, dtype=torch.float64, device=device)
        self.tokens = 0

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        """``X_g^T X_g`` of one batch, [groups, k, k]."""
        x = x.reshape(-1, self.groups, self.group_size).to(self.gram.device, torch.float32).transpose(0, 1)
        return torch.bmm(x.transpose(1, 2), x)

    def add(self, x: torch.Tensor) -> None:
        self.gram += self.increment(x)
        self.tokens += x.numel() // x.shape[-1]


#: bytes per weight element and ratio while candidates are evaluated (repeat, float32 copies,
#: compressed-tensors' temporaries)
WORKING_BYTES = 20
#: the evaluation may use this much GPU memory, or awq_search.gpu_working_budget if larger
MIN_BUDGET_BYTES = 32 * 1024**2


def ratios_together(num_ratios: int, numel: int, device: torch.device) -> int:
    """How many clip ratios one quantization call evaluates: all on a CPU; on a GPU a memory share."""
    if device.type != "cuda":
        return num_ratios
    budget = max(MIN_BUDGET_BYTES, gpu_working_budget(device))
    return max(1, min(num_ratios, budget // max(numel * WORKING_BYTES, 1)))


def supports(args: Any) -> bool:
    from compressed_tensors.quantization import QuantizationStrategy, QuantizationType

    return (
        args is not None
        and args.type == QuantizationType.INT
        and args.strategy == QuantizationStrategy.GROUP
        and not args.dynamic
        and getattr(args, "actorder", None) in (None, False)
    )


@torch.no_grad()
def search_clip(name: str, layer: torch.nn.Linear, gram: torch.Tensor, tokens: int, args: Any,
                input_scales: torch.Tensor | None = None, ratios: tuple[float, ...] = CLIP_RATIOS) -> ClipResult:
    """Choose each group's clip ratio for ``layer`` (already smoothed) and clamp its weight in place."""
    from compressed_tensors.utils import update_offload_parameter

    weight = layer.weight.data
    out_features, in_features = weight.shape
    k = args.group_size
    groups = in_features // k
    g = gram.to(weight.device, torch.float32)
    if input_scales is not None:  # inputs after smoothing are X / s
        inv = (1.0 / input_scales.to(weight.device, torch.float32)).view(groups, k)
        g = g * inv.unsqueeze(2) * inv.unsqueeze(1)
    w = weight.float()
    w_groups = w.view(out_features, groups, k)
    lo = w_groups.amin(dim=-1)
    hi = w_groups.amax(dim=-1)

    # Several ratios per quantization call: their candidates are stacked row-wise (quantization is
    # row by row, so stacking changes nothing), as many as the memory allowance takes.
    all_ratios = torch.tensor(ratios, device=weight.device, dtype=torch.float32)
    step = ratios_together(len(ratios), weight.numel(), weight.device)
    errors = []
    for start in range(0, len(ratios), step):
        r = all_ratios[start : start + step].view(-1, 1, 1)
        n = r.shape[0]
        candidate = quantize_with_range(
            layer, weight.repeat(n, 1), (lo * r).reshape(n * out_features, groups),
            (hi * r).reshape(n * out_features, groups), args,
        ).float()
        d = (candidate.view(n, out_features, in_features) - w).view(n * out_features, groups, k).transpose(0, 1)
        err = (torch.bmm(d, g) * d).sum(-1)  # [groups, n * out]
        errors.append(err.view(groups, n, out_features).permute(1, 2, 0))  # [n, out, groups]
        del candidate, d
    errors = torch.cat(errors)  # [ratios, out, groups]
    best = errors.argmin(dim=0)  # first minimum: r = 1 wins ties
    ratio_values = torch.tensor(ratios, device=weight.device, dtype=torch.float32)
    chosen = ratio_values[best]  # [out, groups]

    scale = max(tokens * out_features, 1)
    before = float(errors[0].sum()) / scale
    after = float(errors.gather(0, best.unsqueeze(0)).sum()) / scale
    new_lo = (lo * chosen).unsqueeze(-1)
    new_hi = (hi * chosen).unsqueeze(-1)
    clipped = torch.maximum(torch.minimum(w_groups, new_hi), new_lo).reshape(out_features, in_features)
    update_offload_parameter(layer, "weight", clipped.to(weight.dtype))
    return ClipResult(
        name=name,
        mean_ratio=float(chosen.mean()),
        clipped_share=float((chosen < 1.0).float().mean()),
        error_before=before,
        error_after=after,
        ratios=chosen.cpu(),
    )
