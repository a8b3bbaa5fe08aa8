"""On a GPU: the fused candidate kernel against the PyTorch path, bit for bit, and their speed.

    python3 bench/gpu_fused_check.py [--out results/h200-fused/fused_check.json]

Part 1 compares :func:`qwodel_nb.engine.fused_candidates.fused_candidates` with
:func:`qwodel_nb.engine.awq_search.torch_candidates` (the PyTorch operators that reproduce
llm-compressor's observer round trip, tested against it in tests/test_awq_search.py) for every
weight dtype, group size, symmetry and scale dtype the kernel accepts, on weights with an outlier
column, an all-zero group and a constant group; and, for one setting, with llm-compressor's own
observer path. Part 2 times both on the Llama-3-8B and SmolLM2-135M layer shapes, 20 grid
points with float64 scales (what duo scaling gives), after a warm-up, as the median of 5. Part 3
times the kernel's tile heights and warps per program on the largest 8B shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # quant_helpers.py: layers, weights, llm-compressor's own path

from qwodel_nb.engine.awq_search import candidate_scales, torch_candidates  # noqa: E402
from qwodel_nb.engine.fused_candidates import fused_candidates, supported  # noqa: E402
from qwodel_nb.engine.triton_rounding import KINDS, TL_DTYPES  # noqa: E402
from quant_helpers import degenerate_weight, quantized_linear, stock_candidate  # noqa: E402


def grid_scales(in_f: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    x_mean = torch.rand(in_f, device="cuda", generator=g) + 0.05
    x_mean[3] = 9.0
    w_mean = (torch.rand(in_f, device="cuda", generator=g) + 0.01).to(dtype)
    grid = [(0.0, False)] + [(i / 19, True) for i in range(1, 20)]
    return candidate_scales(x_mean, w_mean, grid)


def exactness() -> list[dict]:
    rows = []
    seed = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for group in (32, 64, 128):
            for symmetric in (False, True):
                for scale_dtype in (torch.float64, torch.float32):
                    for out_f, in_f in ((48, 256), (200, 512)):
                        seed += 1
                        layer = quantized_linear(out_f, in_f, dtype, group, symmetric, device="cuda")
                        weight = degenerate_weight(out_f, in_f, dtype, group, seed, device="cuda")
                        scales = grid_scales(in_f, seed, scale_dtype)
                        args = layer.quantization_scheme.weights
                        ok = supported(weight, scales, args, layer.weight_scale, getattr(layer, "weight_zero_point", None))
                        fused = fused_candidates(weight, scales, args)
                        reference = torch_candidates(layer, weight, scales, args)
                        same = torch.equal(fused, reference)
                        mismatches = int((fused != reference).sum()) if not same else 0
                        rows.append(dict(dtype=str(dtype), group=group, symmetric=symmetric, scale_dtype=str(scale_dtype),
                                         shape=[out_f, in_f], supported=ok, bit_identical=same, mismatches=mismatches,
                                         elements=fused.numel()))
                        print(f"{rows[-1]}", flush=True)
    # llm-compressor's own observer path, for one setting: the first, the middle and the last point
    layer = quantized_linear(200, 512, torch.bfloat16, 64, False, device="cuda")
    weight = degenerate_weight(200, 512, torch.bfloat16, 64, 99, device="cuda")
    scales = grid_scales(512, 99, torch.float64)
    fused = fused_candidates(weight, scales, layer.quantization_scheme.weights)
    for i in (0, 10, 19):
        stock = stock_candidate(layer, weight, scales[i])
        rows.append(dict(against="llm-compressor observer path", point=i, bit_identical=torch.equal(fused[i], stock)))
        print(rows[-1], flush=True)
    return rows


def median_ms(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timing() -> list[dict]:
    shapes = {
        "llama8b q_proj": (4096, 4096), "llama8b k/v_proj": (1024, 4096), "llama8b o_proj": (4096, 4096),
        "llama8b gate/up_proj": (14336, 4096), "llama8b down_proj": (4096, 14336),
        "smollm2 q_proj": (576, 576), "smollm2 gate/up_proj": (1536, 576), "smollm2 down_proj": (576, 1536),
    }
    rows = []
    for name, (out_f, in_f) in shapes.items():
        layer = quantized_linear(out_f, in_f, torch.bfloat16, 64, False, device="cuda")
        weight = degenerate_weight(out_f, in_f, torch.bfloat16, 64, 7, device="cuda")
        scales = grid_scales(in_f, 7, torch.float64)
        args = layer.quantization_scheme.weights
        t0 = time.perf_counter()
        fused_candidates(weight, scales[:1], args)
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - t0
        torch_ms = median_ms(lambda: torch_candidates(layer, weight, scales, args))
        fused_ms = median_ms(lambda: fused_candidates(weight, scales, args))
        bytes_moved = weight.numel() * 2 * (1 + 20)
        rows.append(dict(layer=name, shape=[out_f, in_f], points=20, torch_ms=torch_ms, fused_ms=fused_ms,
                         ratio=torch_ms / fused_ms, fused_gb_per_s=bytes_moved / fused_ms / 1e6,
                         first_call_s=first_call_s))
        print(rows[-1], flush=True)
        del layer, weight
        torch.cuda.empty_cache()
    return rows


def launch_shapes() -> list[dict]:
    """The kernel's tile height and warps per program, on the largest 8B shape (the default: BLOCK_ROWS, 4 warps)."""
    import triton

    from qwodel_nb.engine import fused_candidates as fc

    layer = quantized_linear(14336, 4096, torch.bfloat16, 64, False, device="cuda")
    weight = degenerate_weight(14336, 4096, torch.bfloat16, 64, 7, device="cuda")
    scales = grid_scales(4096, 7, torch.float64)
    args = layer.quantization_scheme.weights
    q_min, q_max, divisor, eps = fc._constants(args, weight.dtype)
    reference = fused_candidates(weight, scales, args)
    inverse = 1.0 / scales
    rows = []
    for block in (8, 16, 32, 64):
        for warps in (2, 4, 8):
            out = torch.empty_like(reference)

            def run():
                fc._candidates_kernel[(triton.cdiv(14336, block), 4096 // 64, 20)](
                    weight, scales, inverse, out, 14336, 4096, q_min, q_max, divisor, eps,
                    GROUP=64, BLOCK=block, SYMMETRIC=False, DTYPE=TL_DTYPES[weight.dtype],
                    KIND=KINDS[weight.dtype], S64=True, NEAR=fc.NEAR_TIE, RECIPROCAL=fc.RECIPROCAL,
                    num_warps=warps,
                )

            ms = median_ms(run)
            rows.append(dict(block_rows=block, num_warps=warps, ms=ms, same=torch.equal(out, reference)))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import triton

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python3 bench/gpu_fused_check.py" + (f" --out {args.out}" if args.out else ""),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "exactness": exactness(),
        "timing": timing(),
        "launch_shapes": launch_shapes(),
    }
    ident = [r["bit_identical"] for r in result["exactness"]]
    print(f"bit-identical: {sum(ident)}/{len(ident)}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
