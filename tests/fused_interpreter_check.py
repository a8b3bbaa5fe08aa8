"""Run by tests/test_fused_candidates.py in a subprocess with TRITON_INTERPRET=1 (set before Triton
is imported): the fused candidate kernel, executed by Triton's CPU interpreter, against the PyTorch
path it reproduces. Prints one JSON object."""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl

from qwodel_nb.engine import fused_candidates as fc
from qwodel_nb.engine.triton_rounding import rounded
from qwodel_nb.engine.awq_search import candidate_scales, torch_candidates
from quant_helpers import degenerate_weight, quantized_linear  # tests/, this script's folder


@triton.jit
def _helpers_kernel(x_ptr, bf16_ptr, fp16_ptr, rint_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    inside = offsets < n
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
    tl.store(bf16_ptr + offsets, rounded(x, 1), mask=inside)
    tl.store(fp16_ptr + offsets, rounded(x, 2), mask=inside)
    tl.store(rint_ptr + offsets, fc._rint(x), mask=inside)


def helpers() -> dict:
    """Rounding ties: bf16 and fp16 rounding of float32 values, and rounding to integers."""
    halfway_bits = [0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x3F80FFFF, 0x3F807FFF, 0x7F7FFFFF, 0x00018000]
    halfway = torch.tensor(halfway_bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    integers = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 7.5, -8.5, 2.4999, 2.5001, 127.0, -128.0, 0.0, -0.0])
    fp16_ties = torch.tensor([1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 65504.0, 1e-6])
    x = torch.cat([halfway, integers, fp16_ties]).contiguous()
    bf16, fp16, rint = (torch.empty_like(x) for _ in range(3))
    _helpers_kernel[(1,)](x, bf16, fp16, rint, x.numel(), BLOCK=64)
    return {
        "bf16": torch.equal(bf16, x.to(torch.bfloat16).float()),
        "fp16": torch.equal(fp16, x.to(torch.float16).float()),
        "rint": torch.equal(rint[len(halfway_bits):], torch.round(x[len(halfway_bits):])),
    }


@triton.jit
def _near_kernel(r_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    inside = offsets < n
    r = tl.load(r_ptr + offsets, mask=inside, other=0.0)
    tl.store(out_ptr + offsets, fc._near_tie(r, fc.NEAR_TIE).to(tl.int32), mask=inside)


def near_ties() -> dict:
    """The kernel's test for float64 quotients next to a float32 rounding boundary."""
    ulp = 2.0**-23  # float32's, of values in [1, 2)
    values = {
        "midpoint above 1": (1.0 + ulp / 2, 1), "4 float64 ulps below it": (1.0 + ulp / 2 - 2.0**-50, 1),
        "midpoint below 1": (1.0 - ulp / 4, 1), "a quarter ulp above 1": (1.0 + ulp / 4, 0),
        "a quarter ulp below 1.5": (1.5 - ulp / 4, 0), "100 float64 ulps above the midpoint": (1.0 + ulp / 2 + 100 * 2.0**-52, 0),
        "exactly 1": (1.0, 0), "midpoint above 3": (3.0 + ulp, 1), "0.1": (0.1, 0), "-2.5 less a little": (-2.5 - 1e-12, 0),
        "-(midpoint above 5)": (-(5.0 + ulp * 2), 1), "zero": (0.0, 0), "a float32 subnormal": (1e-40, 1),
        "the smallest normal float32": (2.0**-126, 0), "beyond float32": (1e39, 1), "infinity": (float("inf"), 1),
        "NaN": (float("nan"), 1),
    }
    r = torch.tensor([v for v, _ in values.values()], dtype=torch.float64)
    out = torch.empty(len(values), dtype=torch.int32)
    _near_kernel[(1,)](r, out, len(values), BLOCK=32)
    return {name: int(got) == want for (name, (_, want)), got in zip(values.items(), out.tolist())}


def candidates(near: int = fc.NEAR_TIE, reciprocal: bool = True) -> list[dict]:
    """Every setting against the PyTorch path; ``near`` 2**29 takes every tile for near a tie (it
    divides for real), ``reciprocal`` False makes the kernel divide throughout."""
    fc.NEAR_TIE, fc.RECIPROCAL, fc.RECIPROCAL_MIN_WEIGHTS = near, reciprocal, 0
    rows = []
    seed = 0
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for symmetric in (False, True):
            for scale_dtype in (torch.float64, torch.float32):
                for group in (32, 128):
                    seed += 1
                    torch.manual_seed(seed)
                    out_f, in_f = 20, 256  # 20 rows: the last tile of 16 is partly outside
                    layer = quantized_linear(out_f, in_f, dtype, group, symmetric)
                    weight = degenerate_weight(out_f, in_f, dtype, group, seed)
                    x_mean = torch.rand(in_f) + 0.05
                    w_mean = (torch.rand(in_f) + 0.01).to(scale_dtype)
                    grid = [(0.0, False), (0.25, True), (0.5, True), (0.95, True)]
                    scales = candidate_scales(x_mean, w_mean, grid)
                    args = layer.quantization_scheme.weights
                    fused = fc.fused_candidates(weight, scales, args)
                    reference = torch_candidates(layer, weight, scales, args)
                    rows.append({
                        "case": f"{dtype} symmetric={symmetric} scales={scale_dtype} group={group}",
                        "identical": torch.equal(fused, reference),
                        "mismatches": int((fused != reference).sum()),
                        "distinct_points": not torch.equal(fused[0], fused[-1]),
                    })
    return rows


def self_check() -> dict:
    """awq_search's first-use check: passes on the kernel, fails on a kernel that raises or differs."""
    from qwodel_nb.engine import awq_search

    layer = quantized_linear(40, 128, torch.bfloat16, 64, False)
    weight = (torch.randn(40, 128) * 0.05).to(torch.bfloat16)
    scales = candidate_scales(torch.rand(128) + 0.05, torch.rand(128).double() + 0.01, [(0.0, False), (0.5, True)])
    args = layer.quantization_scheme.weights
    out = {"kernel": awq_search._fused_self_check(layer, weight, scales, args)}
    real = fc.fused_candidates

    def cannot_compile(*_):
        raise RuntimeError("Failed to find C compiler\nPlease specify via CC environment variable")

    try:
        fc.fused_candidates = cannot_compile
        out["raises"] = awq_search._fused_self_check(layer, weight, scales, args)
        fc.fused_candidates = lambda w, s, a, *rest: real(w, s, a, *rest) * 2
        out["differs"] = awq_search._fused_self_check(layer, weight, scales, args)
    finally:
        fc.fused_candidates = real
    return out


if __name__ == "__main__":
    json.dump({"helpers": helpers(), "near_ties": near_ties(), "candidates": candidates(),
               "candidates_near_ties": candidates(2**29), "candidates_dividing": candidates(reciprocal=False),
               "self_check": self_check()}, sys.stdout)
