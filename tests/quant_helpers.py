"""Layers, weights and llm-compressor's own candidate path, for comparing candidate weights; and
one whole AWQ run through llm-compressor on a small model.

Used by tests/test_awq_search.py, tests/test_awq_screening.py, tests/fused_interpreter_check.py
(on the CPU) and bench/gpu_fused_check.py (on a GPU); imports nothing from pytest.
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


def awq_run(model_dir: str, texts: list[str], search: str, *, listeners=(), cancel=None, seq_len: int = 48,
            num_samples: int = 8, batch_size: int = 4):
    """llm-compressor's oneshot with qwodel's AWQModifier (``search`` "fast" or "stock"), W4A16 group
    64 asymmetric, lm_head kept, on ``num_samples`` of ``texts`` cut to ``seq_len`` tokens, in
    float32 on the CPU. Returns the model, the modifier and the calibration set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwodel_nb.engine.awq import build_recipe, run_oneshot
    from qwodel_nb.engine.awq_capture import AWQModifier
    from qwodel_nb.engine.calibration import RawCalibration, tokenize
    from qwodel_nb.engine.progress import Emitter

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    calibration = tokenize(RawCalibration(list(texts), "text", None, "test"), tokenizer,
                           seq_len=seq_len, num_samples=num_samples, batch_size=batch_size)
    from qwodel_nb.engine.weight_qparams import QuantizationModifier

    recipe = build_recipe(group_size=64, symmetric=False, ignore=("lm_head",), awq_cls=AWQModifier,
                          quant_cls=QuantizationModifier if search == "fast" else None)
    recipe[0].observe(Emitter(listeners, cancel), model.config.num_hidden_layers, search=search)
    run_oneshot(model, tokenizer, calibration.dataloader(), recipe)
    return model, recipe[0], calibration
