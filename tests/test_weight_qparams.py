"""The weight pass over all layers at once (engine/weight_qparams.py) against llm-compressor's own, on a real model."""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine.awq import build_recipe
from qwodel_nb.engine.weight_qparams import QuantizationModifier, batchable


def _quantized(model_dir: str, dtype, quant_cls, *, symmetric: bool, group_size: int, clip: str = "none"):
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    _, quant = build_recipe(group_size=group_size, symmetric=symmetric, ignore=("lm_head",), clip=clip, quant_cls=quant_cls)
    oneshot(model=model, recipe=[quant])
    return {name: tensor for name, tensor in model.state_dict().items() if name.endswith(("weight_scale", "weight_zero_point"))}


@pytest.mark.parametrize("dtype,symmetric,group_size", [(torch.float32, False, 64), (torch.bfloat16, False, 32),
                                                        (torch.float32, True, 128)])
def test_the_same_scales_and_zero_points_as_the_stock_pass(tiny_llama, monkeypatch, dtype, symmetric, group_size):
    from compressed_tensors.quantization import utils

    stock = _quantized(tiny_llama, dtype, None, symmetric=symmetric, group_size=group_size)
    calls = []
    original = utils.calculate_qparams
    monkeypatch.setattr(utils, "calculate_qparams", lambda *a, **k: calls.append(1) or original(*a, **k))
    ours = _quantized(tiny_llama, dtype, QuantizationModifier, symmetric=symmetric, group_size=group_size)

    assert len(calls) == 1  # every layer of the model in one call (the stock pass: one per layer)
    assert sorted(ours) == sorted(stock) and len(stock) == 2 * 14  # 2 layers x 7 linear layers, lm_head kept
    for name, tensor in stock.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def test_other_observers_take_the_stock_pass(tiny_llama, monkeypatch):
    """The MSE observer (clip="observer") shrinks ranges: not min-max, so the stock pass computes it."""
    from compressed_tensors.quantization import utils

    stock = _quantized(tiny_llama, torch.float32, None, symmetric=False, group_size=64, clip="observer")
    calls = []
    original = utils.calculate_qparams
    monkeypatch.setattr(utils, "calculate_qparams", lambda *a, **k: calls.append(1) or original(*a, **k))
    ours = _quantized(tiny_llama, torch.float32, QuantizationModifier, symmetric=False, group_size=64, clip="observer")
    assert calls == []
    for name, tensor in stock.items():
        assert torch.equal(ours[name], tensor), name


def test_batchable_wants_a_fresh_min_max_weight_observer():
    layer = torch.nn.Linear(4, 4)
    assert not batchable(layer)  # no observer at all
