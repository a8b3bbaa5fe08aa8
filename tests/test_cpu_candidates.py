"""engine/cpu_candidates.py: a CPU's candidate weights made in place, bit for bit as the general path.

Real compressed-tensors schemes on real Linear layers (tests/quant_helpers.py), with the weights
quantization code gets wrong (an all-zero group, a constant group, an outlier column).
"""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs

from qwodel_nb.engine import awq_search, cpu_candidates

from quant_helpers import degenerate_weight, quantized_linear, stock_candidate  # tests/quant_helpers.py


def _scales(points: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    scales = (torch.rand(points, in_features, dtype=torch.float64, generator=generator) + 0.5) ** 0.7
    scales[0] = 1.0  # the grid's identity point
    return scales.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("scale_dtype", [torch.float64, torch.float32], ids=["f64-scales", "f32-scales"])
@pytest.mark.parametrize("piece", [1 << 20, 1000], ids=["whole-points", "7-row-pieces"])
def test_in_place_equals_the_general_path_and_the_observer(dtype, symmetric, group, scale_dtype, piece):
    layer = quantized_linear(40, 256, dtype, group, symmetric)
    weight = degenerate_weight(40, 256, dtype, group, seed=3)
    scales = _scales(6, 256, scale_dtype)
    args = layer.quantization_scheme.weights
    assert cpu_candidates.applies(layer, weight, scales, args)

    ours = cpu_candidates.candidates(layer, weight, scales, args, piece)

    assert ours.shape == (6, 40, 256) and ours.dtype == dtype
    assert torch.equal(ours, awq_search._candidates_at_once(layer, weight, scales, args))
    if scale_dtype == torch.float64:  # the stock search's scales: its own observer round trip agrees too
        for point in (0, 5):
            assert torch.equal(ours[point], stock_candidate(layer, weight, scales[point]))
    assert not torch.equal(ours[1], ours[2])  # different points, different candidates


def test_channel_strategy():
    layer = quantized_linear(24, 96, torch.float32, 32, False)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="channel")
    layer.weight_scale = torch.nn.Parameter(torch.ones(24, 1), requires_grad=False)
    layer.weight_zero_point = torch.nn.Parameter(torch.zeros(24, 1, dtype=torch.int8), requires_grad=False)
    weight = degenerate_weight(24, 96, torch.float32, 32, seed=4)
    scales = _scales(4, 96, torch.float64)
    assert cpu_candidates.applies(layer, weight, scales, args)
    assert torch.equal(cpu_candidates.candidates(layer, weight, scales, args, 1 << 20),
                       awq_search._candidates_at_once(layer, weight, scales, args))


def test_where_it_does_not_apply_the_general_path_runs():
    layer = quantized_linear(16, 64, torch.float32, 32, False)
    args = layer.quantization_scheme.weights
    weight, scales = layer.weight.detach(), _scales(2, 64, torch.float64)
    assert cpu_candidates.applies(layer, weight, scales, args)
    assert not cpu_candidates.applies(layer, weight, scales, None)  # no scheme: nothing to quantize
    assert not cpu_candidates.applies(layer, weight, scales, args.model_copy(update={"type": "float", "num_bits": 8}))
    assert not cpu_candidates.applies(layer, weight, scales, args.model_copy(update={"group_size": 48}))  # 64 % 48
    layer.weight_scale.data = layer.weight_scale.data.to(torch.bfloat16)  # a scale stored in another dtype
    assert not cpu_candidates.applies(layer, weight, scales, args)
    if torch.cuda.is_available():  # pragma: no cover - CI has no GPU
        assert not cpu_candidates.applies(layer, weight.cuda(), scales.cuda(), args)
