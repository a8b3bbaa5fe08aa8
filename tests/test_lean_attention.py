"""engine/lean_attention.py: eager attention in fewer passes, checked against the model's own eager
function (and the rotation against the modeling file's own) on first use.

The lean forms are meant for CUDA GPUs (``DEVICES``); here the tests add the CPU to exercise the
checks, the fallbacks and the switches of a parent's attention modules on a real transformers Llama
attention module. The fused kernels run only on a GPU (or in Triton's interpreter:
tests/test_fused_attention_kernels.py), so the tests of their place in the forms stand in for them with
PyTorch operators that compute the same values, or values made to differ. Whether the forms agree
bit for bit on a GPU is measured on the GPU (bench/RESULTS.md).
"""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine import lean_attention


@pytest.fixture
def llama_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=32)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, layer_idx=0).eval()
    tokens = 16
    hidden = torch.randn(2, tokens, 64)
    position_ids = torch.arange(tokens)[None].expand(2, tokens)
    rotary = LlamaRotaryEmbedding(config)
    mask = torch.full((tokens, tokens), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, tokens, tokens)
    arguments = dict(hidden_states=hidden, attention_mask=mask, position_ids=position_ids,
                     position_embeddings=rotary(hidden, position_ids))
    return layer, arguments


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    monkeypatch.setattr(lean_attention, "DEVICES", ("cpu",))
    monkeypatch.setattr(lean_attention, "_VERDICTS", {})
    monkeypatch.setattr(lean_attention, "_ROTARY_VERDICTS", {})


def _output(layer, arguments):
    out = layer(**arguments)
    return out[0] if isinstance(out, tuple) else out


def test_the_lean_form_is_checked_once_then_used(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    assert lean is not None and len(lean.configs) == 1
    calls = []
    real = lean_attention._lean
    monkeypatch.setattr(lean_attention, "_lean", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad(), lean.active():
        first = _output(layer, arguments)  # the check: the model's own function's output is returned
        assert layer.self_attn.config._attn_implementation == lean_attention.NAME
        second = _output(layer, arguments)
    assert layer.self_attn.config._attn_implementation == "eager"  # restored
    assert len(calls) == 2
    # float32 on the CPU: one softmax or the other, the same values
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 plain": True}
    assert torch.equal(first, eager) and torch.equal(second, eager)


def test_a_form_that_differs_is_dropped_for_its_kind(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    real = lean_attention._lean

    def off_by_a_little(*a):
        output, weights = real(*a)
        return output * (1 + 2.0**-10), weights

    monkeypatch.setattr(lean_attention, "_lean", off_by_a_little)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        outputs = [_output(layer, arguments) for _ in range(3)]
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 plain": False}
    assert all(torch.equal(o, eager) for o in outputs)  # the model's own eager outputs, every time


def test_where_it_does_not_apply(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    assert lean_attention.plan(layer, torch.device("meta")) is None  # not a device of DEVICES
    monkeypatch.setattr(lean_attention, "ENABLED", False)
    assert lean_attention.plan(layer, torch.device("cpu")) is None
    monkeypatch.setattr(lean_attention, "ENABLED", True)
    layer.self_attn.config._attn_implementation = "sdpa"  # only eager attention is replaced
    assert lean_attention.plan(layer, torch.device("cpu")) is None
    layer.self_attn.config._attn_implementation = "eager"
    # rows longer than MAX_ROW, or training, take the model's function without a check
    monkeypatch.setattr(lean_attention, "MAX_ROW", 8)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        _output(layer, arguments)
    assert lean_attention.verdicts() == {}


def test_a_whole_run_with_the_lean_form_is_the_same_bit_for_bit(tiny_llama, calibration_texts, monkeypatch):
    """Real llm-compressor AWQ on the tiny Llama (float32, eager attention), the fast search's exact
    attention passes through the lean form and through the model's own eager function: the same
    losses at every grid point and the same weights."""
    from quant_helpers import awq_run  # tests/quant_helpers.py

    lean_model, lean, _ = awq_run(tiny_llama, calibration_texts, "fast")
    assert lean.search_summary["lean_attention"] == {"LlamaAttention cpu float32 plain": True}
    monkeypatch.setattr(lean_attention, "ENABLED", False)
    eager_model, eager, _ = awq_run(tiny_llama, calibration_texts, "fast")
    for a, b in zip(lean.records, eager.records):
        assert a.grid_losses == b.grid_losses and a.best_ratio == b.best_ratio
    eager_state = eager_model.state_dict()
    for name, tensor in lean_model.state_dict().items():
        assert torch.equal(tensor, eager_state[name]), name


def test_a_mask_that_cannot_be_added_in_place_takes_the_models_function(llama_layer):
    """A mask wider than the scores (as older transformers passed it, sliced by the eager function)
    cannot be added in place: no check, no verdict, the model's own function."""
    from qwodel_nb.engine.fused_softmax import broadcasts_into

    assert broadcasts_into((2, 1, 16, 16), (2, 4, 16, 16))
    assert not broadcasts_into((2, 1, 16, 20), (2, 4, 16, 16))
    assert not broadcasts_into((3, 1, 16, 16), (2, 4, 16, 16))
    layer, arguments = llama_layer
    half = dict(arguments, attention_mask=arguments["attention_mask"].half())  # another dtype than the scores'
    eager = _output(layer, half)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        assert torch.equal(_output(layer, half), eager)
    assert lean_attention.verdicts() == {}


def test_a_form_that_fails_is_dropped_for_its_kind(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    eager = _output(layer, arguments)

    def fails(*_):
        raise RuntimeError("shapes that this form does not handle")

    monkeypatch.setattr(lean_attention, "_lean", fails)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        assert torch.equal(_output(layer, arguments), eager)
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 plain": False}


def _softmax_in_place(scores, scaling, mask, bias=0.0):
    """What the fused softmax kernel computes, with PyTorch's operators (plus ``bias``, to differ)."""
    scores.mul_(scaling)
    if mask is not None:
        scores.add_(mask)
    return torch.softmax(scores + bias, dim=-1)


def test_the_fused_form_is_tried_first_and_a_differing_one_gives_way_to_the_plain_one(llama_layer, monkeypatch):
    from qwodel_nb.engine import fused_softmax

    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    monkeypatch.setattr(fused_softmax, "supported", lambda *a: True)
    calls = []
    monkeypatch.setattr(fused_softmax, "scaled_masked_softmax_", lambda *a: calls.append(1) or _softmax_in_place(*a))
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        outputs = [_output(layer, arguments) for _ in range(2)]
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 fused": True}
    assert len(calls) == 2 and all(torch.equal(o, eager) for o in outputs)

    monkeypatch.setattr(lean_attention, "_VERDICTS", {})
    monkeypatch.setattr(fused_softmax, "scaled_masked_softmax_", lambda *a: calls.append(1) or _softmax_in_place(*a, 1e-3))
    with torch.no_grad(), lean.active():
        outputs = [_output(layer, arguments) for _ in range(3)]
    # the fused form's check fails (the model's outputs returned), then the plain form is checked and kept
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 fused": False, "LlamaAttention cpu float32 plain": True}
    assert len(calls) == 3 and all(torch.equal(o, eager) for o in outputs)


@pytest.mark.parametrize("differs", [False, True])
def test_the_rotation_is_swapped_in_for_the_passes_and_checked_once(llama_layer, monkeypatch, differs):
    import sys

    from qwodel_nb.engine import fused_rotary

    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    namespace = vars(sys.modules[type(layer.self_attn).__module__])
    own = namespace["apply_rotary_pos_emb"]
    calls = []

    def rotary(q, k, cos, sin):  # the fused kernel's contiguous outputs, or outputs made to differ
        calls.append(1)
        q, k = own(q, k, cos, sin)
        return q.contiguous() * (1 + 2.0**-10 if differs else 1), k.contiguous()

    monkeypatch.setattr(fused_rotary, "supported", lambda *a: True)
    monkeypatch.setattr(fused_rotary, "rotary", rotary)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    assert lean.namespaces == [namespace]
    with torch.no_grad(), lean.active():
        assert namespace["apply_rotary_pos_emb"] is not own
        outputs = [_output(layer, arguments) for _ in range(3)]
    assert namespace["apply_rotary_pos_emb"] is own  # restored
    name = "apply_rotary_pos_emb (transformers.models.llama.modeling_llama) cpu float32"
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 plain": True, name: not differs}
    assert len(calls) == (1 if differs else 3)  # once for the check, then used (or not) without it
    assert all(torch.equal(o, eager) for o in outputs)


def test_a_rotary_function_of_another_signature_is_left_alone(llama_layer, monkeypatch):
    import sys

    layer, _ = llama_layer
    module = sys.modules[type(layer.self_attn).__module__]
    monkeypatch.setattr(module, "apply_rotary_pos_emb", lambda q, k, cos, sin, position_ids=None, unsqueeze_dim=1: (q, k))
    assert lean_attention.plan(layer, torch.device("cpu")).namespaces == []


def test_without_the_fused_kernels_the_plain_form_and_the_model_s_rotation_run(llama_layer, monkeypatch):
    """The benchmarks' switch (``FUSED``) for the variant that measures what the fused kernels gain."""
    from qwodel_nb.engine import fused_rotary, fused_softmax

    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    monkeypatch.setattr(fused_softmax, "supported", lambda *a: True)
    monkeypatch.setattr(fused_rotary, "supported", lambda *a: True)
    monkeypatch.setattr(lean_attention, "FUSED", False)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    assert lean.namespaces == []
    with torch.no_grad(), lean.active():
        assert torch.equal(_output(layer, arguments), eager)
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 plain": True}
