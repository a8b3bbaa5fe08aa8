"""The output-aware clipping search: its error arithmetic, its choices, and a real run with it."""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine.awq_clip import CLIP_RATIOS, GramAccumulator, search_clip
from qwodel_nb.engine.awq_search import quantize_with_range


def _layer(in_features=128, out_features=24, group_size=32, seed=0):
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 0.05)
        model[0].weight[:, 5] *= 8  # outliers stretch their groups' ranges
        model[0].weight[2, 40] = 0.9
    scheme = preset_name_to_scheme("W4A16_ASYM", ["Linear"])
    scheme.weights.group_size = group_size
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}))
    return model[0]


def test_gram_gives_each_groups_contribution_error():
    torch.manual_seed(1)
    acc = GramAccumulator(in_features=64, group_size=16, device=torch.device("cpu"))
    x1, x2 = torch.randn(2, 7, 64), torch.randn(5, 64)
    acc.add(x1)
    acc.add(x2)
    assert acc.tokens == 19
    x = torch.cat([x1.reshape(-1, 64), x2])
    d = torch.randn(3, 64)  # a weight error for 3 output rows
    for g in range(4):
        cols = slice(16 * g, 16 * (g + 1))
        direct = ((x[:, cols] @ d[:, cols].T) ** 2).sum(0)  # per output row
        via_gram = ((d[:, cols] @ acc.gram[g].float()) * d[:, cols]).sum(-1)
        assert torch.allclose(via_gram, direct, rtol=1e-4)


def test_search_picks_each_groups_best_ratio_and_clamps_in_place():
    layer = _layer()
    args = layer.quantization_scheme.weights
    torch.manual_seed(2)
    x = torch.randn(256, 128) * (torch.rand(128) + 0.2)
    acc = GramAccumulator(128, 32, torch.device("cpu"))
    acc.add(x)
    original = layer.weight.detach().clone()

    result = search_clip("model.layers.0.mlp.down_proj", layer, acc.gram, acc.tokens, args)

    assert result.error_after <= result.error_before
    assert 0.0 < result.clipped_share <= 1.0 and 0.55 <= result.mean_ratio <= 1.0
    # brute force over the same ratios, group by group, from the original weights
    w = original.view(24, 4, 32)
    lo, hi = w.amin(-1), w.amax(-1)
    errors = []
    for r in CLIP_RATIOS:
        q = quantize_with_range(layer, original, lo * r, hi * r, args)
        errors.append(((x.view(256, 4, 32).unsqueeze(1) * (q - original).view(1, 24, 4, 32)).sum(-1) ** 2).sum(0))
    best = torch.stack(errors).argmin(0)
    expected = torch.tensor(CLIP_RATIOS)[best]
    assert torch.allclose(result.ratios, expected)
    clipped = layer.weight.detach().view(24, 4, 32)
    assert torch.all(clipped.amax(-1) <= hi * expected + 1e-7)
    assert torch.all(clipped.amin(-1) >= lo * expected - 1e-7)
    unchanged = expected == 1.0
    assert torch.equal(clipped[unchanged], w[unchanged])


def test_search_accounts_for_smoothing_scales():
    """Inputs recorded before smoothing are X; after it the layer sees X / s with weights W * s."""
    layer = _layer(seed=3)
    args = layer.quantization_scheme.weights
    torch.manual_seed(4)
    x = torch.randn(200, 128)
    s = torch.rand(128) + 0.5
    before = GramAccumulator(128, 32, torch.device("cpu"))
    before.add(x)
    after = GramAccumulator(128, 32, torch.device("cpu"))
    after.add(x / s)
    twin = _layer(seed=3)
    with torch.no_grad():
        layer.weight.mul_(s)
        twin.weight.mul_(s)
    a = search_clip("a", layer, before.gram, before.tokens, args, input_scales=s)
    b = search_clip("b", twin, after.gram, after.tokens, args)
    assert torch.equal(a.ratios, b.ratios)
    assert a.error_after == pytest.approx(b.error_after, rel=1e-4)


@pytest.mark.parametrize("clip", ["search", "observer", "none"])
def test_real_run_with_each_clip_mode(tiny_llama, calibration_texts, clip):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwodel_nb.engine.awq import build_recipe, run_oneshot
    from qwodel_nb.engine.awq_capture import AWQModifier
    from qwodel_nb.engine.calibration import RawCalibration, tokenize
    from qwodel_nb.engine.stats import Stats

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    calibration = tokenize(RawCalibration(list(calibration_texts), "text", None, "t"), tokenizer,
                           seq_len=48, num_samples=8, batch_size=4)
    recipe = build_recipe(group_size=64, symmetric=False, ignore=("lm_head",), awq_cls=AWQModifier, clip=clip)
    awq = recipe[0].observe(None, model.config.num_hidden_layers, clip=clip)
    run_oneshot(model, tokenizer, calibration.dataloader(), recipe)
    stats = Stats(awq.records, search=awq.search_summary, clips=awq.clips)

    if clip != "search":
        assert stats.clips == []
        from qwodel_nb import plots
        from qwodel_nb.engine.errors import StateError

        with pytest.raises(StateError, match="clip='search'"):
            plots.clip_effect(stats)
        return
    names = sorted(c.name for c in stats.clips)
    # v_proj, o_proj, gate_proj, up_proj, down_proj of both layers; q/k are left alone as in llm-awq
    assert len(names) == 10 and not any(n.endswith(("q_proj", "k_proj")) for n in names)
    assert all(c.error_after <= c.error_before for c in stats.clips)
    assert sum(c.error_after for c in stats.clips) < sum(c.error_before for c in stats.clips)
    assert stats.overview()["clipped_layers"] == 10
    # the saved scheme's zero points and scales come from the clamped ranges: the model still runs
    with torch.no_grad():
        out = model(torch.tensor([calibration.samples[0].input_ids[:16]]))
    assert torch.isfinite(out.logits).all()
    again = Stats.from_json(stats.to_json())
    assert [c.as_dict() for c in again.clips] == [c.as_dict() for c in stats.clips]

    from qwodel_nb import plots

    fig = plots.clip_effect(stats)
    assert plots.figure_title(fig).startswith("Weight clipping per layer (mean error removed")


def test_ratios_evaluated_in_chunks_choose_the_same(monkeypatch):
    """A GPU evaluates a few ratios per call when memory is short; the choice does not change."""
    from qwodel_nb.engine import awq_clip

    torch.manual_seed(5)
    x = torch.randn(128, 128)
    acc = GramAccumulator(128, 32, torch.device("cpu"))
    acc.add(x)
    whole_layer, chunked_layer = _layer(seed=6), _layer(seed=6)
    args = whole_layer.quantization_scheme.weights
    assert awq_clip.ratios_together(10, 10**6, torch.device("cpu")) == 10  # a CPU takes all at once
    whole = search_clip("w", whole_layer, acc.gram, acc.tokens, args)
    monkeypatch.setattr(awq_clip, "ratios_together", lambda n, numel, device: 3)
    chunked = search_clip("c", chunked_layer, acc.gram, acc.tokens, args)
    assert torch.equal(whole.ratios, chunked.ratios)
    assert torch.equal(whole_layer.weight, chunked_layer.weight)


def test_clipping_is_the_same_after_the_fast_or_the_stock_search(tiny_llama, calibration_texts):
    """The clipping search sees the same smoothed layers whichever scale search ran before it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwodel_nb.engine.awq import build_recipe, run_oneshot
    from qwodel_nb.engine.awq_capture import AWQModifier
    from qwodel_nb.engine.calibration import RawCalibration, tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    calibration = tokenize(RawCalibration(list(calibration_texts), "text", None, "t"), tokenizer,
                           seq_len=48, num_samples=8, batch_size=4)
    results = {}
    for search in ("stock", "fast"):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        recipe = build_recipe(group_size=64, symmetric=False, ignore=("lm_head",), awq_cls=AWQModifier, clip="search")
        awq = recipe[0].observe(None, model.config.num_hidden_layers, search=search, clip="search")
        run_oneshot(model, tokenizer, calibration.dataloader(), recipe)
        results[search] = (model.state_dict(), {c.name: c for c in awq.clips})
    (stock_state, stock_clips), (fast_state, fast_clips) = results["stock"], results["fast"]
    assert stock_clips.keys() == fast_clips.keys()
    for name, c in stock_clips.items():
        assert torch.equal(c.ratios, fast_clips[name].ratios), name
    for name, tensor in stock_state.items():
        if tensor.is_floating_point():
            assert torch.allclose(fast_state[name], tensor, rtol=1e-4, atol=1e-6), name
