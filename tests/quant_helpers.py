"""Layers, weights and llm-compressor's own candidate path, for comparing candidate weights.

Used by tests/test_awq_search.py, tests/fused_interpreter_check.py (on the CPU) and
bench/gpu_fused_check.py (on a GPU); imports nothing from pytest.
"""

from __future__ import annotations

import torch


def quantized_linear(out_f: int, in_f: int, dtype: torch.dtype, group: int, symmetric: bool,
                     device: str = "cpu") -> torch.nn.Linear:
    """A Linear carrying the W4A16 scheme (group size ``group``) as llm-compressor's QuantizationModifier leaves it."""
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme

    model = torch.nn.Sequential(torch.nn.Linear(in_f, out_f, bias=False, device=device, dtype=dtype))
    scheme = preset_name_to_scheme("W4A16" if symmetric else "W4A16_ASYM", ["Linear"])
    scheme.weights.group_size = group
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}))
    return model[0]


def degenerate_weight(out_f: int, in_f: int, dtype: torch.dtype, group: int, seed: int,
                      device: str = "cpu") -> torch.Tensor:
    """Random weights (std 0.05) with the cases quantization code gets wrong: an outlier column,
    an all-zero group (a 0/0 zero point), a constant group and a group without negative values."""
    generator = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(out_f, in_f, device=device, generator=generator) * 0.05
    w[:, 3] *= 12
    w[0, :group] = 0
    w[1, group : 2 * group] = 0.02
    w[2, :group] = w[2, :group].abs()
    return w.to(dtype)


def stock_candidate(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``Q(W * s) / s`` for one row of scales, llm-compressor's own way: what
    ``AWQModifier._compute_best_scale`` does per point (copy ``W * s`` into the layer, run the
    memoryless min-max observer, store the quantization parameters, fake-quantize through the
    module's scheme, divide by ``s``). The layer's weight is put back."""
    from compressed_tensors.quantization import forward_quantize
    from compressed_tensors.utils import patch_attrs
    from llmcompressor.modifiers.quantization.calibration import observe, update_qparams
    from llmcompressor.observers.base import Observer

    args = layer.quantization_scheme.weights
    observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
    with patch_attrs([layer], "weight_observer", [observer]):
        view = scales.view(1, -1)
        layer.weight.data.copy_(weight * view)
        layer.weight_observer.delete_statistics(check_fused=False)
        observe([layer], "weight")
        update_qparams([layer], "weight", only_update_onload=True)
        result = (forward_quantize(layer, layer.weight, "weight", args) / view).to(layer.weight.dtype)
    layer.weight.data.copy_(weight)
    return result
