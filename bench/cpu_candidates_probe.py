r"""How fast a CPU makes the AWQ search's candidate weights: many grid points per call, in pieces, in place.

``qwodel_nb.engine.awq_search.torch_candidates`` computes ``Q(W * s) / s`` for a batch of grid
points with PyTorch operators: a float64 product, a cast, the group range, compressed-tensors'
``calculate_qparams`` and ``fake_quantize``, a float64 division and a cast. On a CPU each of those
is a pass over memory, and with 20 points of a 576 x 1536 layer the float64 temporaries take
some 140 MiB, far beyond the caches. Since the ninth session the function makes large batches a
grid point and a block of rows at a time (``CPU_PIECE_ELEMENTS``); since the twelfth, in place in
buffers reused from piece to piece (``qwodel_nb/engine/cpu_candidates.py``). This probe times the
three ways on the shapes of SmolLM2-135M's layers and of a 4096 x 4096 one, with random weights and
scales, and checks that they give the same values bit for bit.

Usage (results: ``OUT``, JSON; a table printed last)::

    OMP_NUM_THREADS=2 python3 bench/cpu_candidates_probe.py --out bench/results/cpu/candidates_probe.json
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

#: (out, in, grid points): SmolLM2-135M's down, gate/up and square projections, an 8B-sized square one
SHAPES = ((576, 1536, 20), (1536, 576, 20), (576, 576, 20), (4096, 4096, 2))


def quantized_layer(out_features: int, in_features: int, group_size: int):
    import torch

    layer = torch.nn.Linear(in_features, out_features, bias=False)
    groups = in_features // group_size
    # update_qparams would copy into these: their dtypes are the ones the candidates are made with
    layer.weight_scale = torch.nn.Parameter(torch.zeros(out_features, groups), requires_grad=False)
    layer.weight_zero_point = torch.nn.Parameter(torch.zeros(out_features, groups, dtype=torch.int8), requires_grad=False)
    return layer


def best_of(repeats: int, make) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = make()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="CPU candidate weights: many grid points per call, in pieces, in place")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cpu", "candidates_probe.json"))
    parser.add_argument("--repeats", type=int, default=3, help="the best of this many timings is kept")
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="only the first N shapes (a quick check)")
    args = parser.parse_args(argv)

    import torch
    from compressed_tensors.quantization import QuantizationArgs

    from qwodel_nb.engine import awq_search

    torch.manual_seed(0)
    quant = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=64)
    piece = awq_search.CPU_PIECE_ELEMENTS
    rows = []
    try:
        for out_features, in_features, points in SHAPES[: args.shapes]:
            layer = quantized_layer(out_features, in_features, quant.group_size)
            weight = layer.weight.detach()
            scales = torch.rand(points, in_features, dtype=torch.float64) + 0.5  # float64, as duo scaling makes them
            awq_search.CPU_IN_PLACE = False
            awq_search.CPU_PIECE_ELEMENTS = sys.maxsize
            whole_s, whole = best_of(args.repeats, lambda: awq_search.torch_candidates(layer, weight, scales, quant))
            awq_search.CPU_PIECE_ELEMENTS = piece
            pieces_s, pieces = best_of(args.repeats, lambda: awq_search.torch_candidates(layer, weight, scales, quant))
            awq_search.CPU_IN_PLACE = True
            in_place_s, in_place = best_of(args.repeats, lambda: awq_search.torch_candidates(layer, weight, scales, quant))
            rows.append({"shape": [out_features, in_features], "points": points, "whole_s": whole_s,
                         "pieces_s": pieces_s, "speedup": whole_s / pieces_s, "identical": bool(torch.equal(whole, pieces)),
                         "in_place_s": in_place_s, "speedup_in_place": pieces_s / in_place_s,
                         "identical_in_place": bool(torch.equal(in_place, pieces))})
    finally:
        awq_search.CPU_PIECE_ELEMENTS = piece
        awq_search.CPU_IN_PLACE = True
    result = {
        "command": "python3 bench/cpu_candidates_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "piece_elements": piece,
        "torch": torch.__version__,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"| layer (out x in), points | whole (s) | in pieces (s) | ratio | in place (s) | ratio to pieces | same values |"
          f"  ({torch.get_num_threads()} threads)")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        same = r["identical"] and r["identical_in_place"]
        print(f"| {r['shape'][0]} x {r['shape'][1]}, {r['points']} | {r['whole_s']:.3f} | {r['pieces_s']:.3f} | "
              f"{r['speedup']:.2f}x | {r['in_place_s']:.3f} | {r['speedup_in_place']:.2f}x | {'yes' if same else 'NO'} |")
    return result


if __name__ == "__main__":
    main()
