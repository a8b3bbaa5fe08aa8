r"""How fast a CPU runs eager attention over a whole grid-batched pass, and a few samples at a time.

The fast search's passes on a CPU run an attention parent's eager attention over every sample of a
pass at once; each call's float32 score matrices (heads x queries x keys per sample) are then tens
of MB, and eager attention makes several passes over them. Since the sixteenth session the passes
call the model's own eager function a few samples at a time (``qwodel_nb/engine/chunked_attention.py``,
``SCORE_CHUNK_BYTES``). This probe times the model's function (transformers' Llama
``eager_attention_forward``, random queries, keys and values, a causal mask) on SmolLM2-135M's and
Gemma 3 270M's attention shapes: at once, at the chunk size the search picks, and at fixed sizes;
in float32 and under bfloat16 autocast (token screening's passes), with the minor page faults per
call; and checks that every chunked output is the whole call's, bit for bit.

Usage (results: ``OUT``, JSON; a table printed last)::

    OMP_NUM_THREADS=2 python3 bench/cpu_attention_probe.py --out bench/results/cpu-chunked-attention/attention_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: (name, heads, key/value heads, head size)
MODELS = (("SmolLM2-135M", 9, 3, 64), ("Gemma 3 270M", 4, 1, 256))
#: (tokens per sample, samples per pass): the 8 x 256 benchmark's passes and qwodel's CPU default
#: 32 x 512 at batch 1 (4 samples a pass), and a few around them
PASSES = ((256, 8), (256, 32), (512, 4), (512, 8), (1024, 4))
#: fixed samples per call, besides the search's own choice
FIXED_ROWS = (1, 2, 4, 8)


def best_of(repeats: int, make) -> tuple[float, object, float]:
    """The best wall time of ``repeats`` calls after a warm-up call, the last result, and the minor
    page faults per call (memory the allocator took from the system again and the kernel zeroed)."""
    import resource

    from cpu_candidates_probe import best_of as best_time  # bench/, beside this file

    make()  # warm-up: allocator and thread pool
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    best, result = best_time(repeats, make)
    return best, result, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="CPU eager attention: at once and a few samples at a time")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cpu-chunked-attention", "attention_probe.json"))
    parser.add_argument("--repeats", type=int, default=5, help="the best of this many timings is kept")
    parser.add_argument("--passes", type=int, default=len(PASSES), help="only the first N pass shapes (a quick check)")
    args = parser.parse_args(argv)

    import contextlib

    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, eager_attention_forward

    from qwodel_nb.engine import chunked_attention

    torch.manual_seed(0)
    rows_out = []
    for name, heads, kv_heads, head_dim in MODELS:
        config = LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=kv_heads,
                             head_dim=head_dim, num_hidden_layers=1)
        config._attn_implementation = "eager"
        module = LlamaAttention(config, 0).eval()
        for tokens, samples in PASSES[: args.passes]:
            mask = torch.full((tokens, tokens), torch.finfo(torch.float32).min).triu(1)[None, None]
            mask = mask.expand(samples, 1, tokens, tokens)
            for dtype in ("float32", "bfloat16 autocast"):
                # under autocast the queries and keys are float32 (the rotation promotes them), the values bfloat16
                query = torch.randn(samples, heads, tokens, head_dim)
                key = torch.randn(samples, kv_heads, tokens, head_dim)
                value = torch.randn(samples, kv_heads, tokens, head_dim)
                if dtype != "float32":
                    value = value.bfloat16()
                context = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype != "float32"
                           else contextlib.nullcontext)

                def whole():
                    with torch.no_grad(), context():
                        return eager_attention_forward(module, query, key, value, mask, module.scaling)[0]

                def chunked(rows):
                    def run():
                        with torch.no_grad(), context():
                            return chunked_attention.attention(eager_attention_forward, module, query, key, value,
                                                               mask, module.scaling, 0.0, rows)[0]
                    return run

                whole_s, expected, whole_faults = best_of(args.repeats, whole)
                chosen = chunked_attention.rows_per_chunk(query, key)
                timed, faults = {}, {}
                same = True
                for rows in sorted({*FIXED_ROWS, chosen}):
                    if rows > samples:
                        continue
                    seconds, output, faults[rows] = best_of(args.repeats, chunked(rows))
                    timed[rows] = seconds
                    same = same and bool(torch.equal(output, expected))
                rows_out.append({"model": name, "tokens": tokens, "samples": samples, "dtype": dtype,
                                 "score_mb_per_sample": heads * tokens * tokens * 4 / 1e6, "whole_s": whole_s,
                                 "chosen_rows": chosen, "chosen_s": timed.get(chosen, whole_s),
                                 "speedup_chosen": whole_s / timed.get(chosen, whole_s),
                                 "rows_s": {str(r): s for r, s in timed.items()}, "identical": same,
                                 "faults_whole": whole_faults, "faults_chosen": faults.get(chosen, whole_faults)})
                print(f"{name} {tokens} x {samples} {dtype}: whole {1000 * whole_s:.1f} ms, "
                      + ", ".join(f"{r}: {1000 * s:.1f}" for r, s in timed.items()) + f" (chosen {chosen}); same {same}",
                      flush=True)
    result = {
        "command": "python3 bench/cpu_attention_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "score_chunk_bytes": chunked_attention.SCORE_CHUNK_BYTES,
        "torch": torch.__version__,
        "rows": rows_out,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\n| model | tokens x samples | products | score MB / sample | at once (ms) | chosen samples per call | "
          f"chunked (ms) | ratio | page faults per call, at once / chunked | same values |  ({torch.get_num_threads()} threads)")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows_out:
        print(f"| {r['model']} | {r['tokens']} x {r['samples']} | {r['dtype']} | {r['score_mb_per_sample']:.1f} | "
              f"{1000 * r['whole_s']:.1f} | {r['chosen_rows']} | {1000 * r['chosen_s']:.1f} | {r['speedup_chosen']:.2f}x | "
              f"{r['faults_whole']:.0f} / {r['faults_chosen']:.0f} | {'yes' if r['identical'] else 'NO'} |")
    return result


if __name__ == "__main__":
    main()
