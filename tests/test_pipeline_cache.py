"""Where the sequential pipeline keeps the layer inputs (engine/pipeline_cache.py), and that the
plan, the memory estimates and the oneshot call follow that choice."""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine.pipeline_cache import SPARE_SHARE, fits_on_gpu, layer_inputs_bytes
from qwodel_nb.engine.settings import make_settings

MIB = 1024**2
GIB = 1024**3


def test_layer_inputs_are_counted_per_token():
    from transformers import LlamaConfig

    # SmolLM2-135M's shape: hidden 576, 9 heads of 64
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)
    per_token = (2 * 576 + 2 * 64 + 512) * 2 + 16  # hidden in and out, cos and sin, a mask row; ids
    assert layer_inputs_bytes(config, 2, 16 * 512, 512) == 16 * 512 * per_token
    assert 28 * MIB < layer_inputs_bytes(config, 2, 16 * 512, 512) < 29 * MIB
    # twice the tokens, twice the bytes; longer samples also widen the mask rows
    assert layer_inputs_bytes(config, 2, 32 * 512, 512) == 2 * layer_inputs_bytes(config, 2, 16 * 512, 512)
    assert layer_inputs_bytes(config, 2, 16 * 512, 1024) > layer_inputs_bytes(config, 2, 16 * 512, 512)


def test_layer_inputs_go_to_the_gpu_only_with_room_to_spare():
    assert fits_on_gpu(30 * MIB, 139 * GIB, 1 * GIB)
    spare = 10 * GIB - 4 * GIB
    assert fits_on_gpu(int(SPARE_SHARE * spare), 10 * GIB, 4 * GIB)
    assert not fits_on_gpu(int(SPARE_SHARE * spare) + 1, 10 * GIB, 4 * GIB)
    assert not fits_on_gpu(1, 4 * GIB, 5 * GIB)  # the estimated peak alone does not fit
    assert not fits_on_gpu(1, None, 1 * GIB) and not fits_on_gpu(1, 10 * GIB, None)


def _gpu_plan(monkeypatch, model, texts, free_bytes):
    from qwodel_nb.engine.plan import make_plan
    from qwodel_nb.engine.vram import GpuInfo, VramReport

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a simulated GPU: the plan only reads its memory
    vram = VramReport(gpus=(GpuInfo(0, 0, "Simulated GPU", 141 * GIB, 141 * GIB - free_bytes, free_bytes),))
    settings = make_settings(model=model, calibration_dataset=texts, num_samples=8, seq_len=64, batch_size=2)
    return make_plan(settings, require_output=False, vram=vram)


def test_plan_keeps_layer_inputs_on_a_roomy_gpu(monkeypatch, tiny_llama, calibration_texts):
    from qwodel_nb.engine.report import format_plan

    plan = _gpu_plan(monkeypatch, tiny_llama, calibration_texts, 139 * GIB)
    assert plan.device == "cuda" and plan.layer_inputs_on_gpu
    expected = layer_inputs_bytes(plan.model.config, 2, 8 * 64, 64)
    assert plan.layer_inputs_bytes == expected
    assert plan.est_ram.parts["layer cache"] == 0  # not on the CPU
    assert plan.as_dict()["layer_inputs"] == {"bytes": expected, "on": "gpu"}
    assert "layer inputs" in format_plan(plan) and "kept on the GPU" in format_plan(plan)

    # a GPU too small for the weights (so layers are onloaded one at a time) with less than twice
    # the inputs to spare beyond that placement's peak keeps llm-compressor's default, the CPU
    from qwodel_nb.engine.plan import estimate_peak_gpu

    layered = "weights on CPU, one layer at a time on GPU 0"
    peak = estimate_peak_gpu(plan.model, layered, plan.compute_dtype, plan.batch_size, plan.seq_len, plan.num_samples)
    tight = _gpu_plan(monkeypatch, tiny_llama, calibration_texts, peak + expected)
    assert tight.placement == layered and not tight.layer_inputs_on_gpu
    assert tight.est_peak_gpu_bytes == peak  # the inputs are not counted on the GPU
    assert tight.est_ram.parts["layer cache"] == expected
    assert "kept on the CPU (they would take more than half" in format_plan(tight)
    roomier = _gpu_plan(monkeypatch, tiny_llama, calibration_texts, peak + 2 * expected)
    assert roomier.placement == layered and roomier.layer_inputs_on_gpu and roomier.est_peak_gpu_bytes == peak + expected


def test_back_off_moves_the_layer_inputs_to_the_cpu(monkeypatch, tiny_llama, calibration_texts):
    from qwodel_nb.engine.backoff import WHOLE, Sizes, apply_step, next_step
    from qwodel_nb.engine.report import format_plan

    plan = _gpu_plan(monkeypatch, tiny_llama, calibration_texts, 139 * GIB)
    step = next_step(Sizes(plan.batch_size, plan.seq_len, plan.num_samples, WHOLE, "gpu"), "awq", 1, "CUDA out of memory.")
    assert (step.setting, step.old, step.new) == ("layer_inputs", "gpu", "cpu")
    moved = apply_step(plan, step)
    assert not moved.layer_inputs_on_gpu and plan.layer_inputs_on_gpu  # a copy
    assert moved.est_peak_gpu_bytes == plan.est_peak_gpu_bytes - plan.layer_inputs_bytes
    assert moved.est_ram.parts["layer cache"] == plan.layer_inputs_bytes
    assert (moved.batch_size, moved.seq_len, moved.num_samples) == (plan.batch_size, plan.seq_len, plan.num_samples)
    assert "kept on the CPU (moved there after the GPU ran out of memory)" in format_plan(moved)


def test_cpu_plan_counts_layer_inputs_in_host_memory(tiny_llama, calibration_texts):
    from qwodel_nb.engine.plan import make_plan

    if torch.cuda.is_available():
        pytest.skip("a CPU plan needs a machine without a GPU")
    settings = make_settings(model=tiny_llama, calibration_dataset=calibration_texts, num_samples=8, seq_len=64, batch_size=2)
    plan = make_plan(settings, require_output=False)
    assert not plan.layer_inputs_on_gpu
    assert plan.est_ram.parts["layer cache"] == plan.layer_inputs_bytes == layer_inputs_bytes(plan.model.config, 4, 8 * 64, 64)


@pytest.mark.parametrize("on_device", [False, True])
def test_oneshot_is_told_where_to_keep_layer_inputs(monkeypatch, on_device):
    """An interface check of the argument alone (the AWQ runs elsewhere use the real oneshot)."""
    import llmcompressor
    from llmcompressor.utils.dev import get_main_device

    from qwodel_nb.engine.awq import run_oneshot

    seen = {}
    monkeypatch.setattr(llmcompressor, "oneshot", lambda **kwargs: seen.update(kwargs))
    run_oneshot(object(), object(), [], [], activations_on_device=on_device)
    assert seen["sequential_offload_device"] == (str(get_main_device()) if on_device else "cpu")
