"""engine/chunked_attention.py and its place in engine/lean_attention.py: on a CPU, the model's own
eager attention a few samples at a time, checked against the whole call on first use.

Real transformers Llama attention modules with random weights; the score budget is made small so
that a batch of a few short samples is cut into several calls.
"""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine import chunked_attention, lean_attention

TOKENS = 16
HEADS = 4


@pytest.fixture
def llama_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=HEADS, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=32)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, layer_idx=0).eval()
    batch = 5
    hidden = torch.randn(batch, TOKENS, 64)
    position_ids = torch.arange(TOKENS)[None].expand(batch, TOKENS)
    mask = torch.full((TOKENS, TOKENS), torch.finfo(torch.float32).min).triu(1)[None, None].expand(batch, 1, TOKENS, TOKENS)
    mask = mask.clone()
    mask[1, :, :, :3] = torch.finfo(torch.float32).min  # a left-padded sample: masks differ from sample to sample
    mask[1, :, :3, :] = 0.0
    arguments = dict(hidden_states=hidden, attention_mask=mask, position_ids=position_ids,
                     position_embeddings=LlamaRotaryEmbedding(config)(hidden, position_ids))
    return layer, arguments


@pytest.fixture(autouse=True)
def _production_devices(monkeypatch):
    """The lean forms on CUDA only, the chunked form on the CPU (the defaults), no verdicts yet, and a
    score budget of two of the fixture's samples per call."""
    monkeypatch.setattr(lean_attention, "DEVICES", ("cuda",))
    monkeypatch.setattr(lean_attention, "CHUNKED_DEVICES", ("cpu",))
    monkeypatch.setattr(lean_attention, "_VERDICTS", {})
    monkeypatch.setattr(chunked_attention, "SCORE_CHUNK_BYTES", 2 * HEADS * TOKENS * TOKENS * 4)


def _output(layer, arguments):
    out = layer(**arguments)
    return out[0] if isinstance(out, tuple) else out


def test_samples_per_call_keep_the_float32_scores_within_the_budget(monkeypatch):
    monkeypatch.setattr(chunked_attention, "SCORE_CHUNK_BYTES", 8 * 1024**2)
    smollm2 = torch.empty(8, 9, 256, 64), torch.empty(8, 3, 256, 64)  # 2.4 MB of scores per sample
    assert chunked_attention.rows_per_chunk(*smollm2) == 3
    assert chunked_attention.rows_per_chunk(torch.empty(4, 9, 512, 64), torch.empty(4, 3, 512, 64)) == 1  # 9.4 MB
    assert chunked_attention.rows_per_chunk(torch.empty(2, 9, 2048, 64), torch.empty(2, 3, 2048, 64)) == 1  # never 0
    # bfloat16 inputs: the softmax still holds its scores in float32
    assert chunked_attention.rows_per_chunk(smollm2[0].bfloat16(), smollm2[1].bfloat16()) == 3


@pytest.mark.parametrize("shared_mask", [False, True])
def test_a_few_samples_at_a_time_give_the_whole_calls_output(llama_layer, shared_mask):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    layer, arguments = llama_layer
    module = layer.self_attn
    torch.manual_seed(1)
    query = torch.randn(5, HEADS, TOKENS, 16)
    key, value = torch.randn(5, 2, TOKENS, 16), torch.randn(5, 2, TOKENS, 16)
    mask = arguments["attention_mask"][:1] if shared_mask else arguments["attention_mask"]
    expected, _ = eager_attention_forward(module, query, key, value, mask, module.scaling)
    for rows in (1, 2, 3, 5):
        output, weights = chunked_attention.attention(eager_attention_forward, module, query, key, value, mask,
                                                      module.scaling, 0.0, rows)
        assert weights is None and torch.equal(output, expected), rows
    # a mask for another number of samples is not guessed at
    with pytest.raises(RuntimeError, match="a mask of batch 3 for 5 samples"):
        chunked_attention.attention(eager_attention_forward, module, query, key, value, mask[:1].expand(3, -1, -1, -1),
                                    module.scaling, 0.0, 2)


def test_on_a_cpu_the_chunked_form_is_checked_once_then_used(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    assert lean is not None and lean.namespaces == []  # the rotation is left alone on a CPU
    calls = []
    real = chunked_attention.attention
    monkeypatch.setattr(chunked_attention, "attention", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    with torch.no_grad(), lean.active():
        first = _output(layer, arguments)  # the check: the model's own function's output is returned
        second = _output(layer, arguments)
    assert calls == [2, 2]  # 5 samples, 2 per call
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 chunked": True}
    assert torch.equal(first, eager) and torch.equal(second, eager)


def test_under_autocast_the_chunked_form_is_a_kind_of_its_own(llama_layer):
    """Token screening's passes run under bfloat16 autocast: their verdict is not the float32 one."""
    layer, arguments = llama_layer
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _output(layer, arguments)
        assert lean_attention.verdicts() == {"LlamaAttention cpu float32 chunked under bfloat16 autocast": True}
        _output(layer, arguments)
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 chunked under bfloat16 autocast": True,
                                         "LlamaAttention cpu float32 chunked": True}


def test_a_chunked_form_that_differs_or_fails_is_dropped(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    eager = _output(layer, arguments)
    real = chunked_attention.attention
    monkeypatch.setattr(chunked_attention, "attention",
                        lambda *a, **k: (real(*a, **k)[0] * (1 + 2.0**-10), None))
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        outputs = [_output(layer, arguments) for _ in range(2)]
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 chunked": False}
    assert all(torch.equal(o, eager) for o in outputs)

    def fails(*_, **__):
        raise RuntimeError("a mask of another shape")

    monkeypatch.setattr(lean_attention, "_VERDICTS", {})
    monkeypatch.setattr(chunked_attention, "attention", fails)
    with torch.no_grad(), lean.active():
        assert torch.equal(_output(layer, arguments), eager)
    assert lean_attention.verdicts() == {"LlamaAttention cpu float32 chunked": False}


def test_a_batch_within_the_budget_and_training_take_the_models_function(llama_layer, monkeypatch):
    layer, arguments = llama_layer
    monkeypatch.setattr(chunked_attention, "SCORE_CHUNK_BYTES", 5 * HEADS * TOKENS * TOKENS * 4)
    lean = lean_attention.plan(layer, torch.device("cpu"))
    with torch.no_grad(), lean.active():
        _output(layer, arguments)
    assert lean_attention.verdicts() == {}  # one call holds the whole batch: nothing to check
    monkeypatch.setattr(chunked_attention, "SCORE_CHUNK_BYTES", HEADS * TOKENS * TOKENS * 4)
    layer.train()
    with torch.no_grad(), lean.active():
        _output(layer, arguments)
    assert lean_attention.verdicts() == {}


def test_a_whole_run_with_chunked_attention_is_the_same_bit_for_bit(tiny_llama, calibration_texts, monkeypatch):
    """Real llm-compressor AWQ on the tiny Llama (float32, eager attention) on the CPU, the fast
    search's attention passes a sample at a time and all at once: the same losses at every grid
    point and the same weights."""
    from quant_helpers import awq_run  # tests/quant_helpers.py

    monkeypatch.setattr(chunked_attention, "SCORE_CHUNK_BYTES", 1)  # one sample per call
    chunked_model, chunked, _ = awq_run(tiny_llama, calibration_texts, "fast")
    assert chunked.search_summary["lean_attention"] == {"LlamaAttention cpu float32 chunked": True}
    monkeypatch.setattr(lean_attention, "ENABLED", False)
    whole_model, whole, _ = awq_run(tiny_llama, calibration_texts, "fast")
    assert [r.grid_losses for r in chunked.records] == [r.grid_losses for r in whole.records]
    assert [r.best_ratio for r in chunked.records] == [r.best_ratio for r in whole.records]
    whole_state = whole_model.state_dict()
    for name, tensor in chunked_model.state_dict().items():
        assert torch.equal(tensor, whole_state[name]), name
