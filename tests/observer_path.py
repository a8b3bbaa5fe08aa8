"""llm-compressor's own way to make one grid point's candidate weights, for comparisons.

What ``AWQModifier._compute_best_scale`` does per point, with its own functions: copy ``W * s``
into the layer, run the memoryless min-max observer, store the quantization parameters, fake-
quantize through the module's scheme, divide by ``s``. Used by tests/test_awq_search.py (on the
CPU) and bench/gpu_fused_check.py (on a GPU); imports nothing from pytest.
"""

from __future__ import annotations

import torch


def stock_candidate(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``Q(W * s) / s`` for one row of scales, through the observer round trip; the layer's weight is put back."""
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
