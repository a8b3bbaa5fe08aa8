r"""What fused attention changes in one attention parent's pass: time, memory and outputs.

The fast search runs an attention parent once per grid point (or per chunk of grid points). Under
llm-compressor's eager attention that pass writes the whole score matrix; under
``scaled_dot_product_attention`` with ``is_causal`` (what ``qwodel_nb/engine/search_attention.py``
switches to) it does not. This script times one Llama attention module, random weights, the
shapes of SmolLM2-135M and of Llama-3-8B, 16 samples of 512 tokens, bf16, called:

* ``eager``: with transformers' eager attention and the causal mask tensor, as in calibration;
* ``sdpa``: with transformers' ``"sdpa"`` implementation and no mask tensor (``is_causal``),

for ``g`` = 1 and 4 grid points per pass (the batch repeated). Per setting: the median time of 15
calls, the memory the call adds at its peak, and the relative (Frobenius) difference of the sdpa
output from the eager one.

Usage (one GPU; nothing but torch and transformers needed)::

    python3 bench/gpu_attention_probe.py --out bench/results/h200-attention/attention_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SHAPES = {
    # hidden, heads, kv heads
    "smollm2": (576, 9, 3),
    "llama8b": (4096, 32, 8),
}
BATCH, SEQ = 16, 512


def probe(shape: str, points: int) -> dict:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    hidden, heads, kv = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=4 * hidden, num_hidden_layers=1, vocab_size=64)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    attention = LlamaAttention(config, 0).to("cuda", torch.bfloat16).eval()
    rows = BATCH * points
    x = torch.randn(rows, SEQ, hidden, device="cuda", dtype=torch.bfloat16)
    cos, sin = LlamaRotaryEmbedding(config).to("cuda")(x, torch.arange(SEQ, device="cuda").unsqueeze(0).expand(rows, -1))
    above = ~torch.ones(SEQ, SEQ, dtype=torch.bool, device="cuda").tril()
    mask = torch.zeros(rows, 1, SEQ, SEQ, device="cuda", dtype=torch.bfloat16).masked_fill(above, torch.finfo(torch.bfloat16).min)

    out = {}
    for impl, m in (("eager", mask), ("sdpa", None)):
        config._attn_implementation = impl
        with torch.no_grad():
            for _ in range(3):
                attention(x, (cos, sin), m)
            torch.cuda.synchronize()
            times = []
            for _ in range(15):
                t = time.perf_counter()
                attention(x, (cos, sin), m)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            result = attention(x, (cos, sin), m)[0].float()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        out[impl] = {"ms": statistics.median(times) * 1e3, "peak_MiB": peak / 2**20, "output": result}
    config._attn_implementation = "eager"
    eager = out["eager"].pop("output")
    sdpa = out["sdpa"].pop("output")
    return {
        "shape": shape,
        "points_per_pass": points,
        "eager": out["eager"],
        "sdpa": out["sdpa"],
        "speedup": out["eager"]["ms"] / out["sdpa"]["ms"],
        "relative_difference": float((sdpa - eager).norm() / eager.norm()),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a GPU")
    rows = [probe(shape, points) for shape in SHAPES for points in (1, 4)]
    for r in rows:
        print(f"{r['shape']:8s} g={r['points_per_pass']}  eager {r['eager']['ms']:7.3f} ms {r['eager']['peak_MiB']:8.1f} MiB  "
              f"sdpa {r['sdpa']['ms']:7.3f} ms {r['sdpa']['peak_MiB']:8.1f} MiB  {r['speedup']:.2f}x  "
              f"rel. diff {r['relative_difference']:.5f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"command": "python3 bench/gpu_attention_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0),
                   "versions": {"torch": torch.__version__}, "batch": BATCH, "seq_len": SEQ, "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
