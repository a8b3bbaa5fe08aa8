"""The fast AWQ scale search against llm-compressor 0.14's own loop: same quantizer, same losses, same choices.

Everything here is real: compressed-tensors quantizes, llm-compressor runs AWQ on small Llama
models built locally, on the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qwodel_nb.engine import awq_search
from qwodel_nb.engine.awq_search import candidate_forwards, candidate_scales, quantize_candidates, repeat_batch

from quant_helpers import awq_run, quantized_linear, stock_candidate  # tests/quant_helpers.py


def _quantized_linear(in_features: int, out_features: int, dtype: torch.dtype, group_size: int, symmetric: bool):
    """A Linear carrying the W4A16 scheme, with small weights and an outlier column, as AWQ meets them."""
    layer = quantized_linear(out_features, in_features, dtype, group_size, symmetric)
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.weight[:, 3] *= 12
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("piece", [None, 1000], ids=["whole", "in-pieces"])
@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "copying"])
def test_stacked_quantization_is_bit_identical_to_the_observer_path(dtype, symmetric, piece, in_place, monkeypatch):
    """All points in one call, or (``piece``) a point and 7 rows at a time, as a CPU makes large layers';
    in place in reused buffers (engine/cpu_candidates.py, a CPU's default) or a tensor per step."""
    monkeypatch.setattr(awq_search, "CPU_IN_PLACE", in_place)
    if piece is not None:
        monkeypatch.setattr(awq_search, "CPU_PIECE_ELEMENTS", piece)  # 1000 // 128 columns: 7 rows, the last piece short
    layer = _quantized_linear(128, 48, dtype, group_size=64, symmetric=symmetric)
    weight = layer.weight.detach().clone()
    x_mean = torch.rand(128) + 0.05
    x_mean[3] = 9.0
    w_mean = weight.abs().float().mean(0)
    grid = [(0.0, False)] + [(i / 18, True) for i in range(19)]
    scales = candidate_scales(x_mean, w_mean, grid)

    ours = quantize_candidates(layer, weight, scales, layer.quantization_scheme.weights)

    assert ours.shape == (20, 48, 128) and ours.dtype == dtype
    for i in range(20):
        stock = stock_candidate(layer, weight, scales[i])
        assert torch.equal(ours[i], stock), f"grid point {i} differs"
    assert torch.equal(layer.weight, weight)  # quantize_candidates never touches the layer
    assert not torch.equal(ours[0], ours[10])  # the points really are different candidates


def test_candidate_scales_follow_the_stock_formula():
    x_mean = torch.tensor([0.5, 2.0, 8.0, 0.0])
    w_mean = torch.tensor([0.1, 0.2, 0.3, 0.4])
    scales = candidate_scales(x_mean, w_mean, [(0.0, False), (0.5, True), (1.0, True)])
    assert torch.allclose(scales[0], torch.ones(4))  # identity: every channel scaled by 1
    duo = (x_mean.pow(0.5) / (w_mean.pow(0.5) + 1e-4)).clamp(min=1e-4)
    duo = duo / (duo.max() * duo.min()).sqrt()
    assert torch.allclose(scales[1], duo)
    assert torch.isfinite(scales).all()


def _stock_scales(x_mean, w_mean, ratio, use_duo):
    """llm-compressor 0.14's per-point formula, written out as it is there."""
    if use_duo:
        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    else:
        scales = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
    scales = scales / (scales.max() * scales.min()).sqrt()
    scales[torch.isinf(scales)] = 1
    scales[torch.isnan(scales)] = 1
    return scales.view(-1)


@pytest.mark.parametrize("dtype,w_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                           (torch.float32, torch.bfloat16)])  # bf16: weight means of a bf16 model
def test_candidate_scales_are_bit_identical_to_stock_on_every_grid_point(dtype, w_dtype, monkeypatch):
    monkeypatch.setattr(awq_search, "_POWERS_CHECKED", {})
    torch.manual_seed(3)
    x_mean = torch.rand(96, dtype=dtype).pow(3) * 40
    x_mean[5] = 0.0  # a channel never activated
    w_mean = (torch.rand(96, dtype=dtype) * 0.2).to(w_dtype)
    grid = [(i / 20, True) for i in range(20)] + [(i / 20, False) for i in range(20)]
    scales = candidate_scales(x_mean, w_mean, grid)
    # the powers were taken for all points at once, and found equal to one at a time
    assert awq_search._POWERS_CHECKED == {("cpu", dtype): True, ("cpu", w_dtype): True}
    for row, (ratio, use_duo) in zip(scales, grid):
        assert torch.equal(row, _stock_scales(x_mean, w_mean, ratio, use_duo)), (ratio, use_duo)
    # a mean that overflows the normalisation: stock's inf/nan -> 1, here too
    x_mean[7] = torch.finfo(dtype).max
    scales = candidate_scales(x_mean, w_mean, grid)
    for row, (ratio, use_duo) in zip(scales, grid):
        assert torch.equal(row, _stock_scales(x_mean, w_mean, ratio, use_duo)), (ratio, use_duo)


def _attention_inputs(batch: int, seq: int, hidden: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=2 * hidden, num_hidden_layers=1, vocab_size=64)
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    attention = LlamaAttention(config, layer_idx=0).eval()
    hidden_states = torch.randn(batch, seq, hidden)
    position_ids = torch.arange(seq).unsqueeze(0).expand(batch, -1)
    cos, sin = LlamaRotaryEmbedding(config)(hidden_states, position_ids)
    mask = torch.full((seq, seq), float("-inf")).triu(1).view(1, 1, seq, seq).expand(batch, 1, seq, seq).contiguous()
    return attention, {"hidden_states": hidden_states, "position_embeddings": (cos, sin), "attention_mask": mask}


@pytest.mark.parametrize("batch", [1, 3])
def test_grid_batched_attention_equals_one_pass_per_point(batch):
    """q/k/v with per-point weights over a g-fold batch give each point's own outputs."""
    attention, arguments = _attention_inputs(batch, seq=7, hidden=32, heads=4, kv_heads=2)
    layers = [attention.q_proj, attention.k_proj, attention.v_proj]
    g = 4
    torch.manual_seed(2)
    weights = {layer: layer.weight.detach() + 0.01 * torch.randn(g, *layer.weight.shape) for layer in layers}

    expanded, b = repeat_batch(arguments, g)
    assert b == batch
    with torch.no_grad(), candidate_forwards(weights, g):
        together = attention(**expanded)[0]
    assert together.shape == (g * batch, 7, 32)

    for i in range(g):
        one = {layer: w[i : i + 1] for layer, w in weights.items()}
        with torch.no_grad(), candidate_forwards(one, 1):
            alone = attention(**arguments)[0]
        assert torch.allclose(together.view(g, batch, 7, 32)[i], alone, atol=1e-5)
    assert "forward" not in attention.q_proj.__dict__  # the temporary forward is gone


def test_fused_attention_is_planned_only_for_the_plain_causal_mask():
    from qwodel_nb.engine.search_attention import plan

    attention, arguments = _attention_inputs(2, seq=6, hidden=32, heads=4, kv_heads=2)
    below = torch.ones(6, 6, dtype=torch.bool).tril()
    lowest = torch.zeros(2, 1, 6, 6).masked_fill(~below, torch.finfo(torch.float32).min)
    padded = lowest.clone()
    padded[1, :, :, 0] = torch.finfo(torch.float32).min  # sample 1's first token is padding
    window = lowest.masked_fill(~torch.ones(6, 6, dtype=torch.bool).triu(-2), torch.finfo(torch.float32).min)

    def planned(mask) -> bool:
        return plan(attention, [dict(arguments, attention_mask=mask)]) is not None

    assert planned(arguments["attention_mask"])  # -inf above the diagonal
    assert planned(lowest)  # what transformers writes
    assert planned(below.expand(2, 1, 6, 6))  # a boolean mask
    assert not planned(padded)
    assert not planned(window)  # a sliding window that cuts
    assert not planned(None)  # no mask: eager attention would attend to every token
    assert plan(attention.o_proj, [arguments]) is None  # no attention inside
    attention.config.attn_logit_softcapping = 30.0  # what scaled_dot_product_attention leaves out
    assert not planned(lowest)


def test_fused_attention_pass_equals_eager_and_restores_the_config():
    from qwodel_nb.engine.search_attention import plan, references_agree, relative_difference

    attention, arguments = _attention_inputs(3, seq=9, hidden=32, heads=4, kv_heads=2)
    with torch.no_grad():
        eager = attention(**arguments)[0]
    fused = plan(attention, [arguments])
    assert fused is not None
    with torch.no_grad(), fused.active():
        assert attention.config._attn_implementation == "sdpa"
        out = attention(**fused.arguments(arguments))[0]
    assert attention.config._attn_implementation == "eager"
    assert arguments["attention_mask"] is not None  # the cached arguments are left as they were
    assert torch.allclose(out, eager, atol=1e-5)
    assert relative_difference([out], [eager]) < 1e-5 and references_agree([out], [eager])
    # the check that guards the swap: eager attention without its mask attends to later tokens
    with torch.no_grad():
        unmasked = attention(**fused.arguments(arguments))[0]
    assert relative_difference([unmasked], [eager]) > 0.05 and not references_agree([unmasked], [eager])


def test_direct_access_only_where_nothing_would_move():
    from compressed_tensors.offload import offload_module
    from compressed_tensors.offload.cache.base import OffloadCache

    from qwodel_nb.engine.resident import direct_access, resident

    cpu = torch.device("cpu")
    layer = offload_module(torch.nn.Linear(4, 3), cpu, cpu)
    batch = [{"input": torch.ones(2, 4), "extra": (torch.zeros(1), None)}]
    assert resident(layer, batch, cpu)
    with direct_access(layer, batch, cpu):
        assert OffloadCache.onloading_disabled
        out = layer(batch[0]["input"])
    assert not OffloadCache.onloading_disabled
    assert out.shape == (2, 3)
    on_meta = [{"input": torch.ones(2, 4, device="meta")}]
    assert not resident(layer, on_meta, cpu)  # an argument elsewhere: onloading would move it

    @dataclasses.dataclass
    class Held:
        value: torch.Tensor

    assert not resident(layer, [{"input": torch.ones(2, 4), "held": Held(torch.ones(1, device="meta"))}], cpu)
    with direct_access(layer, on_meta, cpu):
        assert not OffloadCache.onloading_disabled
    assert not resident(torch.nn.Linear(4, 3, device="meta"), batch, cpu)  # weights off the execution device


def test_powers_at_once_equal_powers_one_at_a_time(monkeypatch):
    """Exponents with paths of their own (0, 0.5, 1) among the others; a device and dtype whose
    check failed keep taking them one at a time."""
    monkeypatch.setattr(awq_search, "_POWERS_CHECKED", {})
    torch.manual_seed(4)
    base = torch.rand(3, 64) * 30
    base[0, 0] = 0.0
    exponents = [0.0, 0.05, 0.5, 0.55, 1.0, 0.95, 0.3]
    one_at_a_time = torch.stack([base.reshape(-1).pow(e) for e in exponents])
    powers = awq_search._powers(base, exponents)
    assert torch.equal(powers, one_at_a_time) and powers.shape == (7, 192)
    assert awq_search._POWERS_CHECKED == {("cpu", torch.float32): True}
    monkeypatch.setitem(awq_search._POWERS_CHECKED, ("cpu", torch.float32), False)
    assert torch.equal(awq_search._powers(base, exponents), one_at_a_time)


def test_plain_passes_count_the_widths_of_linear_and_elementwise_parents():
    """Passes of an MLP or a lone Linear may hold several grid points' tokens on a GPU, sized by
    the widths of their layers; attention and anything with other leaf modules keep the usual bound."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    config = LlamaConfig(hidden_size=32, intermediate_size=80, num_attention_heads=4, num_hidden_layers=1, vocab_size=64)
    mlp, x, out = LlamaMLP(config), torch.zeros(2, 6, 32), torch.zeros(2, 6, 32)
    assert awq_search._plain_units(mlp, {"x": x}, out) == 32 + (80 + 80 + 32) + 80 + 32
    linear = torch.nn.Linear(80, 32)
    assert awq_search._plain_units(linear, {"input": torch.zeros(2, 6, 80)}, out) == 80 + 32 + 32 + 32
    assert awq_search._plain_units(mlp, {"x": x, "mask": x}, out) is None  # more than the input activations
    attention, arguments = _attention_inputs(batch=2, seq=6, hidden=32, heads=4, kv_heads=2)
    assert awq_search._plain_units(attention, arguments, out) is None
    normed = torch.nn.Sequential(LlamaRMSNorm(32), torch.nn.Linear(32, 32))
    assert awq_search._plain_units(normed, {"x": x}, out) is None  # a leaf that is neither
    assert awq_search.plain_pass_tokens(mlp, [{"x": x}], [out], torch.device("cpu")) == 0  # a CPU keeps the token floor


def test_fused_passes_take_a_memory_budget_on_a_gpu_only():
    references = [torch.zeros(2, 6, 32)]
    assert awq_search.fused_pass_tokens(references, torch.device("cpu")) == 0  # a CPU keeps the token floor
    assert awq_search.fused_pass_tokens([], torch.device("cpu")) == 0


def test_points_near_the_best_fused_loss_are_confirmed():
    from qwodel_nb.engine.search_attention import CONFIRM_WITHIN, to_confirm

    assert CONFIRM_WITHIN == 0.02
    assert to_confirm([1.0, 0.5, 0.509, 0.52, float("inf"), float("nan")]) == [1, 2]  # within 2% of 0.5
    assert to_confirm([0.3]) == [0]
    assert to_confirm([float("inf"), float("nan")]) == [0, 1]  # nothing to go by: every point


def test_candidate_rows_are_views_where_they_run_in_order():
    scales = torch.arange(20.0).view(10, 2)
    run = awq_search._rows(scales, [3, 4, 5])
    assert torch.equal(run, scales[[3, 4, 5]])
    assert run.data_ptr() == scales[3].data_ptr()  # a view: nothing copied, no index sent to a device
    picked = awq_search._rows(scales, [7, 2, 9])
    assert torch.equal(picked, scales[[7, 2, 9]]) and picked.data_ptr() != scales.data_ptr()
    assert awq_search._rows(scales, []).shape == (0, 2)


def test_smoothing_skips_the_eval_walk_only_where_eval_mode_is_set():
    """The smoothing loop's calibration context: the same context, without model.train(False) and
    its restore when the modules it runs (the parents and their submodules) are in eval mode
    already (as inside the sequential pipeline); the other modules' modes do not matter."""
    from qwodel_nb.engine.awq_smoothing import _calibration_context

    parent = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model = torch.nn.Sequential(parent, torch.nn.Dropout(0.5))
    calls = []
    original = torch.nn.Module.train

    def counting(self, mode=True):
        calls.append(mode)
        return original(self, mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Module, "train", counting)
        model.train()
        parent[0].eval()  # some of the modules the loop runs are in eval mode, not all
        calls.clear()
        with _calibration_context(model, [parent]):
            assert not model.training and not parent[1].training and not torch.is_grad_enabled()
        assert model.training and parent[1].training  # restored (stock restores the model's own mode everywhere)
        assert calls  # the walk ran: a module the loop runs was in training mode

        parent.eval()
        calls.clear()
        with _calibration_context(model, [parent]):
            assert not torch.is_grad_enabled()
            assert model[1].training  # not the loop's: left as it was
        assert calls == [] and not parent.training and model.training
    from llmcompressor.utils import helpers

    assert helpers.eval_context.__module__ == "llmcompressor.utils.helpers"  # unpatched afterwards


def test_repeat_batch_leaves_broadcast_and_one_dimensional_arguments_alone():
    args = {"x": torch.zeros(2, 5, 3), "mask": torch.zeros(1, 1, 5, 5), "positions": torch.arange(2), "flag": True}
    out, batch = repeat_batch(args, 3)
    assert batch == 2
    assert out["x"].shape == (6, 5, 3)
    assert out["mask"].shape == (1, 1, 5, 5)  # broadcasts over the batch
    assert out["positions"].shape == (2,)  # one-dimensional: never taken for a batch
    assert out["flag"] is True
    with pytest.raises(awq_search.Unsupported):
        repeat_batch({"x": torch.zeros(4)}, 2)


def test_points_per_pass_is_bounded_by_the_largest_batch():
    cpu = torch.device("cpu")
    assert awq_search.points_per_pass(20, 2048, cpu) == 1  # batches already hold the token floor
    assert awq_search.points_per_pass(20, 4096, cpu) == 1
    assert awq_search.points_per_pass(20, 512, cpu) == 4  # 2048 // 512
    assert awq_search.points_per_pass(20, 512, cpu, cap_tokens=4096) == 8  # a larger batch elsewhere in the set
    assert awq_search.points_per_pass(20, 10, cpu) == 20  # never more than the grid
    assert awq_search.points_quantized_together(20, 10**4, cpu) == 20  # small layers: all candidates at once
    assert awq_search.points_quantized_together(20, 2 * 10**6, cpu) == 20  # SmolLM2's MLP: all 20 kept, 153 MiB
    assert awq_search.points_quantized_together(20, 10**7, cpu) == 6  # 256 MiB // (10M elements * 4 bytes)
    assert awq_search.points_quantized_together(20, 10**9, cpu) == 1


def test_gram_loss_equals_the_direct_output_error():
    """sum((E G) * E) / (N * out) is the mean squared output error of a Linear."""
    torch.manual_seed(3)
    x = torch.randn(300, 16, dtype=torch.float64)
    w = torch.randn(8, 16, dtype=torch.float64)
    wq = w + 0.05 * torch.randn_like(w)
    direct = ((x @ wq.T - x @ w.T) ** 2).mean()
    e = wq - w
    gram = x.T @ x
    assert torch.allclose(((e @ gram) * e).sum() / (300 * 8), direct)
    assert awq_search._gram_is_cheaper(tokens=8192, in_features=1536, out_features=576, num_points=20)
    assert not awq_search._gram_is_cheaper(tokens=512, in_features=1536, out_features=576, num_points=20)
    # SmolLM2's up -> down on a CPU with token screening: forward passes at 8 x 256, the Gram form at 32 x 512
    assert not awq_search._gram_is_cheaper(2048, 1536, 576, 20, screened_tokens=512)
    assert awq_search._gram_is_cheaper(16384, 1536, 576, 20, screened_tokens=2048)
    from qwodel_nb.engine.awq_screening import Cut, screening_cuts

    batches = [{"input": torch.zeros(8, 256, 4)}]  # 8 x 256 tokens in one batch: 2 samples screened
    assert awq_search._cut_tokens(batches, screening_cuts(batches, 20)) == 512
    assert awq_search._cut_tokens(batches, [Cut(0, 3)]) == 768 and awq_search._cut_tokens(batches, None) is None


# -- whole runs through llm-compressor ----------------------------------------------------------------


def _awq_run(model_dir: str, texts: list[str], search: str, listeners=(), cancel=None, seq_len: int = 48, batch_size: int = 4):
    model, modifier, _ = awq_run(model_dir, texts, search, listeners=listeners, cancel=cancel, seq_len=seq_len,
                                 batch_size=batch_size)
    return model, modifier


@pytest.mark.parametrize("batch_size", [4, 1])
def test_fast_search_makes_the_stock_choices(tiny_llama, calibration_texts, batch_size):
    stock_model, stock = _awq_run(tiny_llama, calibration_texts, "stock", batch_size=batch_size)
    fast_model, fast = _awq_run(tiny_llama, calibration_texts, "fast", batch_size=batch_size)

    assert fast.search_summary["methods"].get("stock", 0) == 0 and not fast.search_summary["stock_fallbacks"]
    assert stock.search_summary["methods"] == {"stock": len(stock.records)}
    assert fast.search_summary["methods"].get("gram", 0) + fast.search_summary["methods"].get("forward", 0) == len(fast.records)
    assert fast.search_summary["fused_candidates"] == 0  # the fused kernel is for GPUs; here PyTorch operators
    assert len(stock.records) == len(fast.records) > 0
    # every reference but the first (compared with the computed one) came from the calibration pass
    assert fast.search_summary["references_kept"] == len(fast.records) - 1
    assert stock.search_summary["references_kept"] == 0
    for s, f in zip(stock.records, fast.records):
        assert s.smooth_layer == f.smooth_layer
        assert len(f.grid_losses) == len(s.grid_losses) == 20
        assert f.best_ratio == s.best_ratio and f.duo_scaling == s.duo_scaling
        for a, b in zip(s.grid_losses, f.grid_losses):
            assert b == pytest.approx(a, rel=1e-4, abs=1e-12)
        # the fast search's calibration hooks (engine/awq_hooks.py) sum on the device, stock's on the
        # CPU: the same float32 sums; the first layer sees the same inputs, so bit for bit there
        if f.layer == 0:
            assert np.array_equal(f.activation_means, s.activation_means), f.smooth_layer
        assert np.allclose(f.activation_means, s.activation_means, rtol=1e-5, atol=0)

    stock_state, fast_state = stock_model.state_dict(), fast_model.state_dict()
    for name, tensor in stock_state.items():
        if tensor.is_floating_point():
            assert torch.allclose(fast_state[name], tensor, rtol=1e-4, atol=1e-6), name


def test_fused_attention_search_makes_the_stock_choices(tiny_llama, calibration_texts, monkeypatch):
    """Attention parents' passes under scaled_dot_product_attention (on by default on a GPU only):
    the same choices as stock, losses equal up to float32 rounding; with the reference check made
    impossible to pass, every mapping falls back to eager attention and stock's exact losses."""
    from compressed_tensors.offload.cache.base import OffloadCache

    from qwodel_nb.engine import search_attention
    from qwodel_nb.engine.progress import GridPoint

    _, stock = _awq_run(tiny_llama, calibration_texts, "stock")
    monkeypatch.setattr(awq_search, "FUSED_ATTENTION", True)
    direct = []  # per grid-point event (sent during the passes on a CPU): onloading skipped?
    _, fast = _awq_run(tiny_llama, calibration_texts, "fast",
                       listeners=[lambda e: direct.append(OffloadCache.onloading_disabled) if isinstance(e, GridPoint) else None])
    monkeypatch.setattr(search_attention, "REFERENCE_TOLERANCE", -1.0)
    _, refused = _awq_run(tiny_llama, calibration_texts, "fast")

    summary = fast.search_summary
    assert summary["fused_attention"] == 2  # one attention mapping per layer, two layers
    assert summary["fused_attention_points"] == 40
    assert 2 <= summary["fused_attention_points_confirmed"] < 40  # the points near the best, again under eager attention
    assert refused.search_summary["fused_attention"] == 0
    for f in fast.records:
        # the records mark the unconfirmed points as estimates, and the choice is a confirmed point
        attention_parent = f.smooth_layer.endswith("input_layernorm")
        assert bool(f.grid_exact) == attention_parent
        if attention_parent:
            assert f.grid_exact[f.grid_losses.index(f.best_loss)]
    attention_curves_differ = False
    for s, f, r in zip(stock.records, fast.records, refused.records):
        assert (f.best_ratio, f.duo_scaling) == (r.best_ratio, r.duo_scaling) == (s.best_ratio, s.duo_scaling)
        for a, b, c in zip(s.grid_losses, f.grid_losses, r.grid_losses):
            assert b == pytest.approx(a, rel=1e-4, abs=1e-12)
            assert c == pytest.approx(a, rel=1e-6, abs=1e-12)
        attention_curves_differ |= s.smooth_layer.endswith("input_layernorm") and f.grid_losses != r.grid_losses
    assert attention_curves_differ  # the fused passes really ran another attention kernel
    assert any(direct) and not OffloadCache.onloading_disabled  # direct access ran (engine/resident.py), and ended


def test_fast_search_hands_unsupported_mappings_to_stock(tiny_llama, calibration_texts, monkeypatch):
    """A mapping the fast path cannot reproduce is searched by the stock loop, and said so."""
    real = awq_search.search_best_scales

    def refuse_attention(modifier, mapping, *args, **kwargs):
        if mapping.smooth_name.endswith("input_layernorm"):
            raise awq_search.Unsupported("test: attention parent refused")
        return real(modifier, mapping, *args, **kwargs)

    monkeypatch.setattr("qwodel_nb.engine.awq_capture.search_best_scales", refuse_attention)
    _, fast = _awq_run(tiny_llama, calibration_texts, "fast")
    summary = fast.search_summary
    assert summary["methods"]["stock"] == 2  # one attention mapping per layer, two layers
    assert {f["reason"] for f in summary["stock_fallbacks"]} == {"test: attention parent refused"}
    assert all(len(r.grid_losses) == 20 for r in fast.records)


def test_cancel_stops_the_fast_search_within_a_grid_chunk(tiny_llama, calibration_texts):
    import threading

    from qwodel_nb.engine.errors import RunCancelled
    from qwodel_nb.engine.progress import GridPoint

    cancel = threading.Event()
    seen = []

    def listener(event):
        if isinstance(event, GridPoint):
            seen.append(event)
            if len(seen) == 3:
                cancel.set()

    with pytest.raises(RunCancelled):
        _awq_run(tiny_llama, calibration_texts, "fast", listeners=[listener], cancel=cancel)
    # on a CPU losses are reported per chunk of points; the next report after the request stops it
    assert 3 <= len(seen) <= 3 + 20


def test_linear_parents_searched_by_forward_passes_match_stock(tiny_llama, calibration_texts, monkeypatch):
    """down_proj as its own parent, without the Gram shortcut (what bf16 models get): stock choices."""
    monkeypatch.setattr(awq_search, "_gram_is_cheaper", lambda *a, **k: False)
    _, stock = _awq_run(tiny_llama, calibration_texts, "stock")
    _, fast = _awq_run(tiny_llama, calibration_texts, "fast")
    assert fast.search_summary["methods"] == {"forward": len(fast.records)}
    for s, f in zip(stock.records, fast.records):
        assert f.best_ratio == s.best_ratio
        assert f.grid_losses == pytest.approx(s.grid_losses, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_squared_error_sum_is_mse_loss_bit_for_bit(dtype):
    torch.manual_seed(3)
    reference = torch.randn(4, 33, 24, dtype=dtype) * 3
    candidate = reference + torch.randn_like(reference) * 0.05
    ours = awq_search._squared_error_sum(reference, candidate)
    assert ours.dtype == dtype and torch.equal(ours, torch.nn.functional.mse_loss(reference, candidate, reduction="sum"))
    # shapes that only broadcast take the wrapper itself (with its warning), as stock's call would
    with pytest.warns(UserWarning):
        broadcast = awq_search._squared_error_sum(reference, candidate[:1])
    with pytest.warns(UserWarning):
        assert torch.equal(broadcast, torch.nn.functional.mse_loss(reference, candidate[:1], reduction="sum"))
