"""On a GPU: where the fused candidate kernel's time goes, by switching its float64 steps.

    python3 bench/gpu_kernel_probe.py [--out FILE]

A probe, not the product: ``engine/fused_candidates.py``'s kernel around its quantization steps
(which it calls), with the float64 product ``W * s`` and the float64 division ``/ s`` each
replaceable (``MUL``/``DIV``: 0 float64 as the product does, 1 float64 multiplication by the
reciprocal, 2 float32), so the variants other than (0, 0) do not give the product's values; each variant's time and its mismatches against the
product's kernel are printed, on the Llama-3-8B gate/up shape (14336 x 4096), 20 grid points,
bf16 weights, float64 scales, groups of 64.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from qwodel_nb.engine import fused_candidates as fc  # noqa: E402
from qwodel_nb.engine.triton_rounding import rounded  # noqa: E402
from gpu_fused_check import grid_scales, median_ms  # noqa: E402
from quant_helpers import degenerate_weight, quantized_linear  # noqa: E402


@triton.jit
def _probe_kernel(w_ptr, s_ptr, inv_ptr, out_ptr, rows, cols, q_min, q_max, divisor, eps,
                  GROUP: tl.constexpr, BLOCK: tl.constexpr, MUL: tl.constexpr, DIV: tl.constexpr):
    point, col, inside, offsets, w, s = fc._tile(w_ptr, s_ptr, rows, cols, GROUP, BLOCK)  # the product kernel's
    if MUL == 0:
        v = (w.to(tl.float32).to(tl.float64) * s[None, :]).to(tl.float32)
    else:
        v = w.to(tl.float32) * s.to(tl.float32)[None, :]
    v = rounded(v, 1)
    q = fc._fake_quantized(v, q_min, q_max, divisor, eps, False, 1)  # the product kernel's steps 2 to 4
    if DIV == 0:
        c = fc._quotient(q, s, True)
    elif DIV == 1:
        inv = tl.load(inv_ptr + point * cols + col)
        c = (q.to(tl.float64) * inv[None, :]).to(tl.float32)
    else:
        c = tl.div_rn(q, s.to(tl.float32)[None, :])
    fc._store(out_ptr, rows, cols, point, offsets, inside, c, 1, tl.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows_n, cols_n = 14336, 4096
    layer = quantized_linear(rows_n, cols_n, torch.bfloat16, 64, False, device="cuda")
    weight = degenerate_weight(rows_n, cols_n, torch.bfloat16, 64, 7, device="cuda")
    scales = grid_scales(cols_n, 7, torch.float64)
    inverse = 1.0 / scales
    qargs = layer.quantization_scheme.weights
    q_min, q_max, divisor, eps = fc._constants(qargs, weight.dtype)
    reference = fc.fused_candidates(weight, scales, qargs, False)  # every division a division
    product_ms = median_ms(lambda: fc.fused_candidates(weight, scales, qargs))
    results = [dict(variant="product kernel", ms=product_ms)]
    print(results[-1], flush=True)
    for reciprocal in (False, True):
        out = fc.fused_candidates(weight, scales, qargs, reciprocal)
        ms = median_ms(lambda: fc.fused_candidates(weight, scales, qargs, reciprocal))
        results.append(dict(variant=f"product kernel, last step by reciprocals: {reciprocal}",
                            ms=ms, mismatches=int((out != reference).sum())))
        print(results[-1], flush=True)
    for mul in (0, 1):
        for div in (0, 1, 2):
            out = torch.empty_like(reference)

            def run():
                _probe_kernel[(triton.cdiv(rows_n, 16), cols_n // 64, 20)](
                    weight, scales, inverse, out, rows_n, cols_n, q_min, q_max, divisor, eps,
                    GROUP=64, BLOCK=16, MUL=mul, DIV=div)

            ms = median_ms(run)
            results.append(dict(variant=f"mul {['f64', 'f32'][mul]}, div {['f64', 'f64 reciprocal', 'f32'][div]}",
                                ms=ms, mismatches=int((out != reference).sum())))
            print(results[-1], flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(dict(date=time.strftime("%Y-%m-%d"), command="python3 bench/gpu_kernel_probe.py --out " + args.out,
                           device=torch.cuda.get_device_name(), shape=[rows_n, cols_n], points=20, results=results), fh, indent=1)


if __name__ == "__main__":
    main()
