"""AWQ's candidate weights ``Q(W * s) / s`` on a CPU, made in place in reused buffers.

:func:`qwodel_nb.engine.awq_search.torch_candidates` reproduces, operator by operator, what the
stock search puts into a balance layer's weight for each grid point: the product ``W * s`` in the
scales' dtype (float64: llm-compressor's duo-scaling means are float64) stored in the weight's
dtype, the group minima and maxima, ``calculate_qparams``, ``fake_quantize`` and the division by
``s``. Each of those steps allocates a tensor as large as the weight, and three of them mix a
float32 and a float64 operand, which PyTorch's CPU kernels handle in a slower casting loop.

Here the same steps, in the same order, with the same dtypes, write into two working buffers
allocated once per call (:func:`candidates`):

* the weight is widened to float64 once for all grid points (up to ``WIDE_COPY_BYTES``), so that
  ``W * s`` is a float64 product of float64 operands (the widening is exact: the same product as
  the mixed one);
* ``fake_quantize``'s divide, add, clamp, round, subtract and multiply run in place on the stored
  product, the clamp with its bounds as numbers (-8 and 7 for 4 bits: exact, the same result as
  compressed-tensors' 0-dim tensor bounds, and 37 instead of 319 microseconds on one point of a
  1536 x 576 layer);
* the division by ``s`` writes its float64 quotient into the buffer and is then stored in the
  weight's dtype, as ``Tensor.to`` rounds it.

In-place operations round as their out-of-place forms do, so every value is the one the general
path (``awq_search._candidates_at_once``, a tensor per step) makes, bit for bit
(``tests/test_cpu_candidates.py`` checks it over dtypes, strategies, group sizes and symmetries,
and against llm-compressor's own observer round trip). Measured on this project's 2-core CPU
(bench/RESULTS.md, "Candidates in place on a CPU"): 1.6 to 2.4x faster than the general path's
pieces on SmolLM2's layers, 1.4x on a 4096 x 4096 one. Where the arithmetic would differ (a stored
scale in another dtype than the weight, a float or dynamic scheme), :func:`applies` is false and
the general path runs.
"""

from __future__ import annotations

from typing import Any

import torch

#: the largest weight widened to the scales' dtype once per call (a few MiB for SmolLM2's layers)
WIDE_COPY_BYTES = 64 * 1024**2


def applies(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> bool:
    """Whether :func:`candidates` makes this layer's candidates (else the general path does)."""
    from compressed_tensors.quantization import QuantizationStrategy, QuantizationType

    if args is None or weight.device.type != "cpu" or not weight.is_floating_point():
        return False
    if args.type != QuantizationType.INT or args.strategy not in (QuantizationStrategy.GROUP, QuantizationStrategy.CHANNEL):
        return False
    if args.dynamic or getattr(args, "scale_dtype", None) is not None or getattr(args, "actorder", None) not in (None, False):
        return False
    if args.strategy == QuantizationStrategy.GROUP and weight.shape[-1] % args.group_size:
        return False
    stored = getattr(layer, "weight_scale", None)
    # fake_quantize computes in the scale's dtype after the round; in place that must be the weight's
    return stored is None or stored.dtype == weight.dtype


def candidates(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any, piece_elements: int) -> torch.Tensor:
    """``Q(W * s) / s`` for each row of ``scales``: [g, out, in] in the weight's dtype, a grid point
    and a block of rows (at most ``piece_elements`` weight elements) at a time."""
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.utils import calculate_qparams
    from compressed_tensors.quantization.utils.helpers import calculate_range

    g = scales.shape[0]
    out_features, in_features = weight.shape
    wide = torch.promote_types(weight.dtype, scales.dtype)
    # widened once for all points where that copy is small; a larger layer multiplies mixed dtypes
    weight_wide = weight.to(wide) if weight.numel() * wide.itemsize <= WIDE_COPY_BYTES else weight
    scales = scales.to(wide)
    rows = max(1, min(out_features, piece_elements // in_features))
    product = torch.empty(rows * in_features, dtype=wide)
    narrow = product if wide == weight.dtype else torch.empty(rows * in_features, dtype=weight.dtype)
    result = torch.empty(g, out_features, in_features, dtype=weight.dtype)
    q_min, q_max = (float(v) for v in calculate_range(args, weight.device))
    group = args.group_size if args.strategy == QuantizationStrategy.GROUP else in_features
    stored_scale = getattr(layer, "weight_scale", None)
    stored_zero = getattr(layer, "weight_zero_point", None)
    for point in range(g):
        s = scales[point]
        for start in range(0, out_features, rows):
            stop = min(start + rows, out_features)
            n = (stop - start) * in_features
            wide_piece = product[:n].view(stop - start, in_features)
            piece = narrow[:n].view(stop - start, in_features)
            torch.mul(weight_wide[start:stop], s, out=wide_piece)  # W * s, in the scales' dtype
            if piece is not wide_piece:
                piece.copy_(wide_piece)  # ... stored in the weight's dtype
            grouped = piece.view(stop - start, -1, group)
            scale, zero = calculate_qparams(grouped.amin(dim=-1), grouped.amax(dim=-1), args)
            if stored_scale is not None:
                scale = scale.to(stored_scale.dtype)
            if stored_zero is not None:
                zero = zero.to(stored_zero.dtype)
            scale = scale.unsqueeze(-1)
            grouped.div_(scale)
            if zero is not None:
                grouped.add_(zero.unsqueeze(-1).to(piece.dtype))
            grouped.clamp_(q_min, q_max).round_()
            if zero is not None:
                grouped.sub_(zero.unsqueeze(-1).to(scale.dtype))
            grouped.mul_(scale)
            if piece is wide_piece:
                piece.div_(s)
                result[point, start:stop] = piece
            else:
                torch.div(piece, s, out=wide_piece)  # the quotient in the scales' dtype,
                result[point, start:stop] = wide_piece  # ... rounded to the weight's dtype
    return result
