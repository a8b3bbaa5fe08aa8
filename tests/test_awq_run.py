"""Real AWQ runs through llm-compressor 0.14 on small Llama models built locally, on the CPU."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from qwodel_nb import OutputError, Quantizer
from qwodel_nb.engine.evaluate import perplexity
from qwodel_nb.engine.output import SUMMARY_NAME

FAKE_TOKEN = "hf_" + "Qw0delN0tARealT0ken" * 2


def _load(path, decompress: bool = False):
    """Load a model; with ``decompress`` a compressed-tensors checkpoint gets plain dequantized weights."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    kwargs = {"quantization_config": CompressedTensorsConfig(run_compressed=False)} if decompress else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)


def _all_files_text(folder) -> str:
    chunks = []
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                chunks.append(fh.read().decode("latin-1"))
    return "\n".join(chunks)


def test_original_python_example(tiny_llama, offline_wikitext, tiny_tokenizer, heldout_texts):
    """The qwodel README example, changed only in the model path; the output reloads and generates."""
    q = Quantizer(backend="awq", model_path=tiny_llama, output_dir="./output",
                  calibration_dataset="wikitext:wikitext-2-raw-v1", token=FAKE_TOKEN)
    out = q.quantize(format="int4")

    assert os.path.abspath(out) == str(offline_wikitext / "output")
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "recipe.yaml", "tokenizer.json", SUMMARY_NAME} <= files
    assert not [f for f in os.listdir(offline_wikitext) if f.startswith(".qwodel-tmp")]

    config = json.load(open(os.path.join(out, "config.json")))
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 128, False)
    assert qc["ignore"] == ["lm_head"]  # patterns are saved resolved to the modules they matched

    recipe = open(os.path.join(out, "recipe.yaml")).read()
    assert "AWQModifier" in recipe and "QuantizationModifier" in recipe

    # The token is in no file of the output, nor in the Quantizer's repr.
    assert FAKE_TOKEN not in _all_files_text(out)
    assert FAKE_TOKEN not in repr(q) and FAKE_TOKEN not in repr(q.settings)

    summary = json.load(open(os.path.join(out, SUMMARY_NAME)))
    assert summary["calibration"]["source"].startswith("dataset wikitext:wikitext-2-raw-v1")
    assert summary["plan"]["group_size"] == 128
    assert summary["sizes"]["after_bytes"] < summary["sizes"]["before_bytes"]
    assert summary["versions"]["llmcompressor"].startswith("0.14")

    original = _load(tiny_llama)
    quantized = _load(out, decompress=True)
    # AWQ really smoothed: the RMSNorm in front of q/k/v was divided by the chosen scales.
    norm_before = original.model.layers[0].input_layernorm.weight
    norm_after = quantized.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm_before, norm_after)
    # The weights are 4-bit: every group of 128 input columns holds at most 16 distinct values.
    w = quantized.model.layers[0].mlp.down_proj.weight.detach()
    groups = w.reshape(w.shape[0], -1, 128)
    assert max(len(torch.unique(groups[r, g])) for r in range(4) for g in range(groups.shape[1])) <= 16

    ppl_fp = perplexity(original, tiny_tokenizer, heldout_texts, seq_len=128)
    ppl_q = perplexity(quantized, tiny_tokenizer, heldout_texts, seq_len=128)
    assert math.isfinite(ppl_q)
    assert ppl_q < 1.5 * ppl_fp, (ppl_fp, ppl_q)

    generated = quantized.generate(**tiny_tokenizer("The engineer", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > 2


def test_width_not_divisible_by_128_falls_back(tiny_llama_odd, tmp_path, calibration_file):
    """Hidden size 96: 128 and 64 do not divide it, so group size 32 is chosen, reported and saved."""
    q = Quantizer(model_path=tiny_llama_odd, output_dir=str(tmp_path / "out"), calibration_dataset=calibration_file,
                  num_samples=8, seq_length=64)
    out = q.quantize()
    assert q.last_plan.layout.group_size == 32
    assert "96 input columns" in q.last_plan.layout.group_size_reason
    weights = json.load(open(os.path.join(out, "config.json")))["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert weights["group_size"] == 32
    reloaded = _load(out)
    assert torch.isfinite(reloaded(torch.tensor([[1, 2, 3, 4]])).logits).all()


def test_batch_size_reaches_calibration(tiny_llama, tmp_path, calibration_texts):
    """batch_size is really used: 8 samples in batches of 4 are 2 calibration batches."""
    # Texts longer than seq_len: all samples have equal length, so batching cuts nothing.
    long_texts = [" ".join(calibration_texts[i : i + 3]) for i in range(0, 36, 3)]
    q = Quantizer(model_path=tiny_llama, output_dir=str(tmp_path / "out"), calibration_dataset=long_texts,
                  batch_size=2, seq_length=32, num_samples=6)
    # Per-run overrides at quantize() win over the constructor's values.
    q.quantize(batch_size=4, num_samples=8, seq_len=48)
    cal = q.last_result.calibration
    assert (cal["samples"], cal["batch_size"], cal["batches"], cal["seq_len"]) == (8, 4, 2, 48)
    assert cal["dropped_by_batching"] == 0 and cal["tokens_used"] == 8 * 48
    plan = q.last_plan
    assert plan.calibration.batch_size.source == "you" and plan.calibration.num_samples.value == 8


def test_refuses_non_empty_output_and_overwrites_on_request(tiny_llama, tmp_path, calibration_texts):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    q = Quantizer(model_path=tiny_llama, output_dir=str(out), calibration_dataset=calibration_texts, num_samples=4, seq_length=32)
    with pytest.raises(OutputError, match="not empty"):
        q.quantize()
    assert os.listdir(out) == ["keep.txt"]

    q.quantize(overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".qwodel-tmp")]


def test_failed_save_leaves_nothing_behind(tiny_llama, tmp_path, calibration_texts, monkeypatch):
    """A failure while the output is written leaves neither the output folder nor a temporary one."""
    from transformers import PreTrainedTokenizerBase

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken_save)
    q = Quantizer(model_path=tiny_llama, output_dir=str(tmp_path / "out"), calibration_dataset=calibration_texts,
                  num_samples=4, seq_length=32)
    with pytest.raises(OSError, match="disk full"):
        q.quantize()
    assert os.listdir(tmp_path) == []


def test_user_ignore_keeps_layer_unquantized(tiny_llama, tmp_path, calibration_texts):
    """Under grouped-query attention AWQ does not balance o_proj, so it may be kept in 16 bits."""
    q = Quantizer(model_path=tiny_llama, output_dir=str(tmp_path / "out"), calibration_dataset=calibration_texts,
                  num_samples=4, seq_length=32)
    out = q.quantize(ignore=["lm_head", "re:.*o_proj$"])
    qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    assert set(qc["ignore"]) == {"lm_head", "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"}
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.o_proj.weight" in keys  # kept as a plain weight
    assert "model.layers.0.self_attn.q_proj.weight_packed" in keys  # quantized
