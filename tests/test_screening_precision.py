"""Token screening's passes in bfloat16 (engine/screening_precision.py): where it applies, what each
Linear computes, and the screening errors it gives. Whole runs with it are in test_awq_screening.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwodel_nb.engine import screening_precision
from qwodel_nb.engine.awq_search import _Passes, candidate_forwards
from qwodel_nb.engine.screening_precision import applies, computing_in, low_arguments

LOW = torch.bfloat16


def _low(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A Linear without bias computed in bfloat16, written out."""
    return F.linear(x.to(LOW), weight.to(LOW))


def _mlp(hidden: int = 64, inner: int = 128):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(3)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inner, num_hidden_layers=1, vocab_size=32)
    return LlamaMLP(config).eval()


def test_it_applies_to_float32_searches_on_a_cpu_only(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(screening_precision, "LOW_PRECISION", None)
    assert applies(cpu, torch.float32) == screening_precision.hardware_bf16()
    monkeypatch.setattr(screening_precision, "LOW_PRECISION", True)
    assert applies(cpu, torch.float32)
    assert not applies(cpu, torch.bfloat16)  # a model already in a 16-bit dtype screens in it
    assert not applies(cuda, torch.float32)  # GPUs do not screen by default; forced, they screen as they compute
    monkeypatch.setattr(screening_precision, "LOW_PRECISION", False)
    assert not applies(cpu, torch.float32)


def test_the_hardware_check_does_without_an_unknown_build(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert screening_precision.hardware_bf16() is False

    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert screening_precision.hardware_bf16() is False


def test_products_run_in_bfloat16_and_the_rest_follows_its_operands():
    mlp = _mlp()
    x = torch.randn(2, 5, 64)
    with torch.no_grad(), computing_in(LOW):
        out = mlp(low_arguments({"x": x}, LOW)["x"])
    by_hand = _low(F.silu(_low(x, mlp.gate_proj.weight)) * _low(x, mlp.up_proj.weight), mlp.down_proj.weight)
    assert out.dtype == LOW and torch.equal(out, by_hand)
    with torch.no_grad(), computing_in(None):  # no dtype: float32 as the model computes
        assert mlp(x).dtype == torch.float32


def test_only_the_activations_are_rounded_among_the_arguments():
    x, cos = torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    mask = torch.full((1, 1, 5, 5), torch.finfo(torch.float32).min).triu(1)
    out = low_arguments({"hidden_states": x, "position_embeddings": (cos, cos), "attention_mask": mask}, LOW)
    assert out["hidden_states"].dtype == LOW and torch.equal(out["hidden_states"], x.to(LOW))
    assert out["position_embeddings"][0] is cos
    # the mask's float32 minimum would be minus infinity in bfloat16: a padded row would give NaN
    assert out["attention_mask"] is mask and torch.isinf(mask.to(LOW)).any()
    same = {"hidden_states": x}
    assert low_arguments(same, None) is same
    ids = {"input_ids": torch.arange(5).view(1, 5)}
    assert low_arguments(ids, LOW)["input_ids"].dtype == torch.int64


@pytest.mark.parametrize("g", [1, 3])
def test_candidates_in_bfloat16_give_each_points_own_product(g):
    layer = torch.nn.Linear(32, 48, bias=False)
    torch.manual_seed(4)
    candidates = torch.randn(g, 48, 32)
    x = torch.randn(g * 2, 5, 32)  # grid-point major, two samples each
    with torch.no_grad(), candidate_forwards({layer: candidates.to(LOW)}, g), computing_in(LOW):
        out = layer(x)
    assert out.dtype == LOW and out.shape == (g * 2, 5, 48)
    for i in range(g):
        alone = F.linear(x[2 * i : 2 * i + 2].to(LOW), candidates[i].to(LOW))
        assert torch.allclose(out[2 * i : 2 * i + 2].float(), alone.float(), rtol=1e-2, atol=1e-2)
        if g == 1:  # one point: the same kernel as the plain Linear in bfloat16
            assert torch.equal(out, alone)
    assert "forward" not in layer.__dict__


def test_screening_errors_in_bfloat16_compare_with_the_unquantized_parent_run_the_same_way():
    """Each sample's squared error of the MLP with candidate gate/up weights against the MLP with its
    own weights, both with every product in bfloat16 (and the activations in it), written out by hand."""
    mlp = _mlp()
    quantized = [mlp.gate_proj, mlp.up_proj]
    weights = {layer: layer.weight.detach().clone() for layer in quantized}
    torch.manual_seed(5)
    points = 4
    candidates = {layer: w + 0.05 * torch.randn(points, *w.shape) for layer, w in weights.items()}
    x = torch.randn(3, 6, 64)
    passes = _Passes(mlp, quantized, weights, torch.ones(points, 64), torch.device("cpu"), 0, False, cap_tokens=18)
    passes.q_max = points
    passes._kept = (list(range(points)), candidates)  # the candidates as if made for these points
    reference = mlp(x).detach()  # the float32 reference, which the bfloat16 screening replaces

    with torch.no_grad():
        errors, _ = passes.sample_errors(list(range(points)), [{"x": x}], [reference], None, LOW)
        wide, _ = passes.sample_errors(list(range(points)), [{"x": x}], [reference], None)

    def by_hand(gate, up):  # every product in bfloat16, the activations following it
        return _low(F.silu(_low(x, gate)) * _low(x, up), mlp.down_proj.weight).float()

    own = by_hand(weights[mlp.gate_proj], weights[mlp.up_proj])
    for p in range(points):
        expected = (by_hand(candidates[mlp.gate_proj][p], candidates[mlp.up_proj][p]) - own).pow(2).flatten(1).sum(-1)
        assert errors[p] == pytest.approx(expected.tolist(), rel=0.05)
        # the same ranking quantity as float32 screening, within bfloat16's rounding
        assert errors[p] == pytest.approx(wide[p], rel=0.1)
    assert "forward" not in mlp.down_proj.__dict__ and "forward" not in mlp.gate_proj.__dict__


def test_the_unquantized_weights_screen_to_no_error_in_bfloat16():
    """Candidates equal to the layers' own weights: the bfloat16 reference cancels bfloat16's rounding."""
    mlp = _mlp()
    quantized = [mlp.gate_proj, mlp.up_proj]
    weights = {layer: layer.weight.detach().clone() for layer in quantized}
    x = torch.randn(2, 6, 64)
    passes = _Passes(mlp, quantized, weights, torch.ones(1, 64), torch.device("cpu"), 0, False, cap_tokens=12)
    passes._kept = ([0], {layer: w.unsqueeze(0) for layer, w in weights.items()})
    with torch.no_grad():
        errors, _ = passes.sample_errors([0], [{"x": x}], [mlp(x)], None, LOW)
        wide, _ = passes.sample_errors([0], [{"x": x}], [mlp(x)], None)
    assert errors == [[0.0, 0.0]]
    assert wide == [[0.0, 0.0]]


def test_an_attention_parent_with_padding_screens_to_finite_errors():
    """Left padding leaves rows of the mask fully masked at float32's minimum; in bfloat16 that would
    be minus infinity and the softmax NaN. The mask stays float32, so every error is finite."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         num_hidden_layers=1, vocab_size=32)
    config._attn_implementation = "eager"
    torch.manual_seed(6)
    attention = LlamaAttention(config, layer_idx=0).eval()
    batch, seq = 2, 6
    x = torch.randn(batch, seq, 32)
    cos, sin = LlamaRotaryEmbedding(config)(x, torch.arange(seq).unsqueeze(0).expand(batch, -1))
    lowest = torch.finfo(torch.float32).min
    mask = torch.zeros(batch, 1, seq, seq).masked_fill(~torch.ones(seq, seq, dtype=torch.bool).tril(), lowest)
    mask[1, :, :, :2] = lowest  # sample 1 starts with two padding tokens: its first two rows see nothing
    arguments = {"hidden_states": x, "position_embeddings": (cos, sin), "attention_mask": mask}
    quantized = [attention.q_proj, attention.k_proj, attention.v_proj]
    weights = {layer: layer.weight.detach().clone() for layer in quantized}
    candidates = {layer: w + 0.05 * torch.randn(3, *w.shape) for layer, w in weights.items()}
    passes = _Passes(attention, quantized, weights, torch.ones(3, 32), torch.device("cpu"), 0, False, cap_tokens=12)
    passes.q_max = 3
    passes._kept = ([0, 1, 2], candidates)
    with torch.no_grad():
        reference = attention(**arguments)[0]
        errors, _ = passes.sample_errors([0, 1, 2], [arguments], [reference], None, LOW)
    assert all(e > 0 and e < float("inf") for row in errors for e in row), errors
