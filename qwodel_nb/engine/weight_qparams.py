"""The W4A16 scheme's weight scales and zero points, computed for all layers together.

After AWQ, llm-compressor 0.14's ``QuantizationModifier`` runs a data-free pass that gives every
quantized layer its weight scales and zero points, one layer at a time: the layer's weight
observer takes each group's minimum and maximum, then ``calculate_qparams`` turns them into
scales and zero points with about a dozen small tensor operations, one of which copies a
constant from the host to the device (a wait for the device). On SmolLM2-135M (211 layers) on the
H200 that pass took 57–115 ms of a fast AWQ run of about 1 s (bench/RESULTS.md).

This module's ``QuantizationModifier`` takes the minima and maxima layer by layer with the same
functions (``flatten_for_calibration``, then the min-max observers' ``_get_min_max``), then
calls ``calculate_qparams`` once for all layers that share quantization arguments, on the minima and
maxima laid end to end. Every step of ``calculate_qparams`` works value by value, so each layer
gets the same scales and zero points, bit for bit; they are stored the way the stock pass stores
them (``update_offload_parameter``). Layers it does not cover (other observers, a global scale,
dynamic or already observed weights) and distributed runs take the stock pass unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from llmcompressor.modifiers.quantization import QuantizationModifier as _StockQuantizationModifier


class QuantizationModifier(_StockQuantizationModifier):
    """llm-compressor's ``QuantizationModifier`` with the weight pass over all layers at once
    (same name, so a saved recipe reads as the stock one)."""

    def on_sequential_epoch_end(self, state, event, modules: list[torch.nn.Module], **kwargs):
        from llmcompressor.modifiers.quantization.calibration import observe, update_qparams
        from llmcompressor.modifiers.quantization.quantization import base as stock_base
        from llmcompressor.observers import ACTIVATION_OBS

        if stock_base.is_distributed():  # as patched for qwodel's workers (engine/awq.py) or not
            return super().on_sequential_epoch_end(state, event, modules, **kwargs)
        quantized = [module for module in modules if stock_base.is_module_quantized(module)]
        self.sync_obs_act_stats(quantized)
        update_qparams(quantized, ACTIVATION_OBS)
        together = [module for module in quantized if batchable(module)]
        chosen = set(map(id, together))
        rest = [module for module in quantized if id(module) not in chosen]
        observe(rest, "weight")
        update_qparams(rest, "weight")
        weight_qparams(together)


def batchable(module: torch.nn.Module) -> bool:
    """Whether the module's weight qparams are the plain min-max ones :func:`weight_qparams` makes."""
    from compressed_tensors.quantization import QuantizationStrategy, QuantizationType
    from llmcompressor.observers.min_max import MemorylessMinMaxObserver, MinMaxObserver, StaticMinMaxObserver

    observer = getattr(module, "weight_observer", None)
    weight = getattr(module, "weight", None)
    # observers whose first observation is the plain min-max computed here (not their subclasses)
    if weight is None or type(observer) not in (MemorylessMinMaxObserver, StaticMinMaxObserver, MinMaxObserver):
        return False
    if observer.has_statistics:
        return False
    args = observer.args
    return (
        not getattr(args, "dynamic", False)
        and args.type == QuantizationType.INT
        and args.strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.CHANNEL, QuantizationStrategy.TENSOR)
        and weight.numel() > 0
        and hasattr(module, "weight_scale")
        and hasattr(module, "weight_zero_point")
    )


def weight_qparams(modules: list[torch.nn.Module]) -> None:
    """Store each module's weight scales and zero points, computed from its weight's min and max
    per group with one ``calculate_qparams`` call per set of equal quantization arguments."""
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization.utils import calculate_qparams
    from llmcompressor.observers.helpers import flatten_for_calibration
    from llmcompressor.observers.min_max import _get_min_max  # the min-max observers' own reduction

    groups: dict[Any, list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]] = {}
    keys: dict[int, str] = {}
    with torch.no_grad():
        for module in modules:
            args = module.weight_observer.args
            key = keys.get(id(args))
            if key is None:
                key = keys[id(args)] = args.model_dump_json()
            observed = flatten_for_calibration(module.weight, "weight", args)
            low, high = _get_min_max(observed)
            groups.setdefault((key, low.dtype, low.device), []).append((module, low, high))
        for members in groups.values():
            args = members[0][0].weight_observer.args
            scales, zero_points = calculate_qparams(
                min_vals=torch.cat([low.reshape(-1) for _, low, _ in members]),
                max_vals=torch.cat([high.reshape(-1) for _, _, high in members]),
                quantization_args=args,
            )
            start = 0
            for module, low, _ in members:
                end = start + low.numel()
                shape = low.shape if low.ndim else (1,)  # calculate_qparams gives one value a dimension
                update_offload_parameter(module, "weight_scale", scales[start:end].reshape(shape))
                update_offload_parameter(module, "weight_zero_point", zero_points[start:end].reshape(shape))
                start = end
