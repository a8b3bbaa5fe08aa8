"""engine/lean_attention.py: eager attention with its softmax in one pass, checked against the
model's own eager function on first use.

The lean form is meant for CUDA GPUs (``DEVICES``); here the tests add the CPU to exercise the
check, the fallback and the switch of a parent's attention modules on a real transformers Llama
attention module. Whether the two forms agree bit for bit on a GPU is measured on the GPU
(bench/RESULTS.md, "Eager attention's softmax in one pass").
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
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32": True}
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
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32": False}
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
    assert lean.search_summary["lean_attention"] == {"LlamaAttention cpu float32": True}
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
    from qwodel_nb.engine.lean_attention import _broadcasts_into

    assert _broadcasts_into((2, 1, 16, 16), (2, 4, 16, 16))
    assert not _broadcasts_into((2, 1, 16, 20), (2, 4, 16, 16))
    assert not _broadcasts_into((3, 1, 16, 16), (2, 4, 16, 16))
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
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32": False}
