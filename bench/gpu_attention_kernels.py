"""The fused attention kernels on a GPU: PyTorch's values bit for bit, and their time.

    python3 bench/gpu_attention_kernels.py --out results/h200-fused-attention/attention_kernels.json

Compares, on the GPU:

* ``engine/fused_softmax.py`` against eager attention's own operations
  (``softmax(scores * scaling + mask, dim=-1, dtype=float32).to(dtype)``) over dtypes, row lengths,
  masks and spreads of the scores (a spread of 200 puts exponentials among float32's subnormals);
* ``engine/fused_rotary.py`` against transformers' ``apply_rotary_pos_emb`` on the Llama-3-8B shapes;
* a whole Llama-3-8B-shaped attention module (random weights, bf16, 16 x 512 tokens) under its own
  eager attention and under the lean forms (``engine/lean_attention.py``), with the verdicts of the
  first-use checks.

Each also times both sides (median of CUDA-event timings). Needs a CUDA GPU and Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qwodel_nb.engine import fused_rotary, fused_softmax, lean_attention  # noqa: E402
from gpu_fused_check import median_ms  # noqa: E402  (bench/, this script's folder)

SCALING = 128**-0.5


def causal(batch: int, queries: int, row: int, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.full((queries, row), torch.finfo(dtype).min, device="cuda").triu(row - queries + 1).to(dtype)
    return mask[None, None].expand(batch, 1, queries, row)


def eager_softmax(scores, mask):
    weights = scores * SCALING
    if mask is not None:
        weights = weights + mask
    return torch.softmax(weights, dim=-1, dtype=torch.float32).to(scores.dtype)


def plain_softmax(scores, mask):
    scores.mul_(SCALING)
    if mask is not None:
        scores.add_(mask)
    return torch.softmax(scores, dim=-1)


def softmax_rows() -> list[dict]:
    rows = []
    cases = [(torch.bfloat16, (16, 32, 512, 512), "causal", spread) for spread in (1.0, 4.0, 30.0, 200.0)]
    cases += [(torch.float16, (16, 32, 512, 512), "causal", 4.0), (torch.float32, (4, 32, 512, 512), "causal", 4.0),
              (torch.bfloat16, (4, 8, 100, 100), "causal", 4.0), (torch.bfloat16, (2, 4, 64, 1024), "none", 8.0),
              (torch.bfloat16, (2, 2, 16, 7), "causal", 4.0), (torch.float32, (2, 4, 64, 1000), "none", 8.0),
              (torch.bfloat16, (16, 9, 512, 512), "causal", 4.0)]
    for seed, (dtype, shape, kind, spread) in enumerate(cases):
        torch.manual_seed(seed)
        scores = (torch.randn(shape, device="cuda") * spread / SCALING).to(dtype)
        mask = causal(shape[0], shape[2], shape[3], dtype) if kind == "causal" else None
        expected = eager_softmax(scores, mask)
        got = fused_softmax.scaled_masked_softmax_(scores.clone(), SCALING, mask)
        row = {"dtype": str(dtype)[6:], "shape": list(shape), "mask": kind, "spread": spread,
               "supported": fused_softmax.supported(shape, dtype, scores.device, mask),
               "identical": bool(torch.equal(got, expected)), "differing": int((got != expected).sum()),
               "subnormal_outputs": int(((expected != 0) & (expected.abs() < torch.finfo(torch.float32).tiny)).sum())}
        if shape[0] == 16 and spread == 4.0:
            copies = [scores.clone() for _ in range(3)]
            row["eager_ms"] = median_ms(lambda: eager_softmax(scores, mask), repeats=20)
            row["plain_ms"] = median_ms(lambda: plain_softmax(copies[0], mask), repeats=20)
            row["fused_ms"] = median_ms(lambda: fused_softmax.scaled_masked_softmax_(copies[1], SCALING, mask), repeats=20)
        rows.append(row)
    return rows


def rotary_rows() -> list[dict]:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rows = []
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        torch.manual_seed(1)
        batch, tokens = 16, 512
        q = torch.randn(batch, tokens, 32, 128, device="cuda").to(dtype).transpose(1, 2)
        k = torch.randn(batch, tokens, 8, 128, device="cuda").to(dtype).transpose(1, 2)
        positions = torch.arange(tokens, device="cuda")[None].expand(batch, tokens)
        cos, sin = LlamaRotaryEmbedding(config).to("cuda")(q.to(dtype), positions)
        expected = apply_rotary_pos_emb(q, k, cos, sin)
        got = fused_rotary.rotary(q, k, cos, sin)
        rows.append({"dtype": str(dtype)[6:], "supported": fused_rotary.supported(q, k, cos, sin),
                     "identical": all(torch.equal(a, b) for a, b in zip(got, expected)),
                     "model_ms": median_ms(lambda: apply_rotary_pos_emb(q, k, cos, sin), repeats=20),
                     "fused_ms": median_ms(lambda: fused_rotary.rotary(q, k, cos, sin), repeats=20)})
    return rows


def module_rows() -> dict:
    """A Llama-3-8B-shaped attention module, its own eager attention against the lean forms."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=500000.0, max_position_embeddings=8192, num_hidden_layers=1)
    config._attn_implementation = "eager"
    torch.manual_seed(2)
    module = LlamaAttention(config, layer_idx=0).to("cuda", torch.bfloat16).eval()
    batch, tokens = 16, 512
    hidden = torch.randn(batch, tokens, 4096, device="cuda", dtype=torch.bfloat16)
    positions = torch.arange(tokens, device="cuda")[None].expand(batch, tokens)
    arguments = dict(hidden_states=hidden, position_embeddings=LlamaRotaryEmbedding(config).to("cuda")(hidden, positions),
                     attention_mask=causal(batch, tokens, tokens, torch.bfloat16))
    with torch.no_grad():
        eager = module(**arguments)[0]
        lean = lean_attention.plan(module, hidden.device)
        outputs = []
        with lean.active():
            for _ in range(3):  # the first calls check; the others are the lean forms' own
                outputs.append(module(**arguments)[0])
        eager_ms = median_ms(lambda: module(**arguments), repeats=10)

        def lean_call():
            with lean.active():
                module(**arguments)

        lean_ms = median_ms(lean_call, repeats=10)
    return {"verdicts": lean_attention.verdicts(), "identical": [bool(torch.equal(o, eager)) for o in outputs],
            "eager_ms": eager_ms, "lean_ms": lean_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = parser.parse_args()
    result = {"command": "python3 bench/gpu_attention_kernels.py" + (f" --out {args.out}" if args.out else ""),
              "date": time.strftime("%Y-%m-%d"), "device_name": torch.cuda.get_device_name(),
              "torch": torch.__version__, "softmax": softmax_rows(), "rotary": rotary_rows(), "module": module_rows()}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
