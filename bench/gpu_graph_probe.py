r"""What CUDA graphs could give the fast scale search on a GPU: measured on one layer, not built.

On SmolLM2 at batch 16 the fast search's smoothing step is bound by the host (bench/RESULTS.md:
the GPU kernels take a fraction of the wall time): for every grid point of a mapping it runs the
parent module (the attention block, or the MLP) once per calibration batch, eagerly, through the
Hugging Face module's Python code. This script times, on one decoder layer with random weights and
the shapes of a real model, the parent forward passes of one mapping's 20 grid points:

* ``eager``: the module called 20 times, each time after writing the candidate weights into the
  balance layers, then the mean squared error against the reference output (what the fast search
  does per grid point, less the candidate arithmetic);
* ``graph``: the same work captured once in a CUDA graph (weights copied into the module's own
  parameter storage, forward, loss) and replayed 20 times.

Both use the eager attention that llm-compressor forces during calibration, and the same inputs.
The losses of both are compared, so a difference in arithmetic would show. The candidate weights
here are random perturbations; their making (the fused kernel) is not timed.

Usage (one GPU; nothing but torch and transformers needed)::

    python3 bench/gpu_graph_probe.py --out bench/results/h200-graphs/graph_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SHAPES = {
    # hidden, intermediate, heads, kv heads, head dim
    "smollm2": (576, 1536, 9, 3, 64),
    "llama8b": (4096, 14336, 32, 8, 128),
}


def build_layer(shape: str, dtype):
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    hidden, inter, heads, kv, head_dim = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=kv, head_dim=head_dim, num_hidden_layers=1, vocab_size=128)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, 0).to("cuda", dtype).eval()
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return layer, LlamaRotaryEmbedding(config).to("cuda")


def parent_call(layer, parent: str, batch, seq, rotary, dtype):
    """The parent's balance layers and a function running the parent on fixed inputs."""
    import torch

    hidden = layer.self_attn.q_proj.in_features
    torch.manual_seed(1)
    x = torch.randn(batch, seq, hidden, device="cuda", dtype=dtype)
    if parent == "attention":
        module = layer.self_attn
        balance = [module.q_proj, module.k_proj, module.v_proj]
        positions = torch.arange(seq, device="cuda").unsqueeze(0).expand(batch, -1)
        cos_sin = rotary(x, positions)
        mask = torch.full((seq, seq), float("-inf"), device="cuda", dtype=dtype).triu(1)[None, None].expand(batch, 1, -1, -1)

        def run():
            return module(hidden_states=x, position_embeddings=cos_sin, attention_mask=mask)[0]
    else:
        module = layer.mlp
        balance = [module.gate_proj, module.up_proj]

        def run():
            return module(x)
    return balance, run


def time_mapping(layer, parent: str, batch: int, seq: int, rotary, dtype, points: int = 20, repeats: int = 7) -> dict:
    import torch

    balance, run = parent_call(layer, parent, batch, seq, rotary, dtype)
    with torch.no_grad():
        reference = run().float()
        originals = [b.weight.detach().clone() for b in balance]
        torch.manual_seed(2)
        candidates = [[w + 1e-3 * torch.randn_like(w) for w in originals] for _ in range(points)]
        losses_eager = torch.empty(points, device="cuda")

        def eager_pass():
            for i, cand in enumerate(candidates):
                for b, w in zip(balance, cand):
                    b.weight.copy_(w)
                losses_eager[i] = (run().float() - reference).pow(2).mean()

        # the graph: copy the point's weights in, run, write its loss; inputs selected by a device index
        stacked = [torch.stack([c[j] for c in candidates]) for j in range(len(balance))]
        index = torch.zeros((), dtype=torch.long, device="cuda")
        losses_graph = torch.empty(points, device="cuda")

        def step():  # device-side indexing only: nothing may wait for the host during capture
            where = index.view(1)
            for b, s in zip(balance, stacked):
                b.weight.copy_(s.index_select(0, where)[0])
            losses_graph.index_copy_(0, where, (run().float() - reference).pow(2).mean().view(1))

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()  # warm-up outside the graph (cuBLAS handles, allocator)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()

        def graph_pass():
            for i in range(points):
                index.fill_(i)
                graph.replay()

        def timed(fn) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - t

        eager_pass()
        graph_pass()
        eager_s = [timed(eager_pass) for _ in range(repeats)]
        graph_s = [timed(graph_pass) for _ in range(repeats)]
        for b, w in zip(balance, originals):
            b.weight.copy_(w)
    diff = float(((losses_eager - losses_graph).abs() / losses_eager.abs().clamp_min(1e-30)).max())
    return {"parent": parent, "batch": batch, "seq": seq, "points": points,
            "eager_ms": 1e3 * statistics.median(eager_s), "graph_ms": 1e3 * statistics.median(graph_s),
            "speedup": statistics.median(eager_s) / statistics.median(graph_s),
            "losses_max_rel_diff": diff, "losses_identical": bool(torch.equal(losses_eager, losses_graph))}


def main(argv=None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description="eager vs CUDA-graph parent forward passes for one mapping's grid")
    parser.add_argument("--shapes", default="smollm2,llama8b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--out", default=os.path.join("bench", "results", "h200-graphs", "graph_probe.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_graph_probe.py needs a GPU")
    rows = []
    for shape in args.shapes.split(","):
        layer, rotary = build_layer(shape, torch.bfloat16)
        for parent in ("attention", "mlp"):
            row = {"shape": shape, **time_mapping(layer, parent, args.batch, args.seq, rotary, torch.bfloat16)}
            rows.append(row)
            print(f"{shape:8s} {parent:9s} eager {row['eager_ms']:8.2f} ms  graph {row['graph_ms']:8.2f} ms  "
                  f"{row['speedup']:5.2f}x  losses identical: {row['losses_identical']}", flush=True)
        del layer
        torch.cuda.empty_cache()
    result = {"date": time.strftime("%Y-%m-%d"), "device_name": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "command": "python3 bench/gpu_graph_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
