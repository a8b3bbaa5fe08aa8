"""Run by tests/test_fused_attention_kernels.py in a subprocess with TRITON_INTERPRET=1 (set before Triton is
imported): the fused attention kernels (engine/fused_softmax.py, engine/fused_rotary.py), executed
by Triton's CPU interpreter. Prints one JSON object.

The softmax kernel is compared with PyTorch's CUDA order of operations written with PyTorch
operators (``cuda_order_softmax``), both taking the exponential from NumPy, as the interpreter
does; the rotary kernel with transformers' own ``apply_rotary_pos_emb`` on the CPU, whose bf16 and
fp16 operations round as the GPU's do.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from qwodel_nb.engine import fused_rotary, fused_softmax


def _round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).float()


def _exp(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.exp(x.numpy()))


def cuda_order_softmax(scores: torch.Tensor, scaling: float, mask: torch.Tensor | None,
                       lane_order: bool = True) -> torch.Tensor:
    """``softmax(scores * scaling + mask)`` in the order of operations of PyTorch's one-warp CUDA
    kernel (engine/fused_softmax.py's docstring), in float32 on the CPU; without ``lane_order``,
    a row's exponentials are summed in another order (PyTorch's CPU sum)."""
    dtype = scores.dtype
    y = _round(scores.float() * float(torch.tensor(scaling, dtype=torch.float32)), dtype)
    if mask is not None:
        y = _round(y + mask.float(), dtype)
    row = y.shape[-1]
    width, per_lane = fused_softmax.lanes(row)
    padded = torch.full((*y.shape[:-1], width * per_lane), float("-inf"))
    padded[..., :row] = y
    top = padded.max(dim=-1, keepdim=True).values
    e = _exp(padded - top)
    lanes = e.view(*y.shape[:-1], per_lane, width)
    sums = torch.zeros(*y.shape[:-1], width)
    for it in range(per_lane):
        sums = sums + lanes[..., it, :]
    while sums.shape[-1] > 1:
        half = sums.shape[-1] // 2
        sums = sums[..., :half] + sums[..., half:]
    if not lane_order:
        sums = e.sum(dim=-1, keepdim=True)
    return (e[..., :row] / sums).to(dtype)


def _causal(batch: int, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    lowest = torch.finfo(dtype).min
    return torch.full((tokens, tokens), lowest).triu(1).to(dtype)[None, None].expand(batch, 1, tokens, tokens)


def softmax_cases() -> tuple[list[dict], bool]:
    """The kernel against the CUDA order on each case, and whether another order of the sums would
    have been told apart (float32 outputs show the sums' last bits)."""
    torch.manual_seed(0)
    rows, order_told = [], False
    # (dtype, batch, heads, queries, row, mask kind, spread of the scores)
    cases = [
        (torch.bfloat16, 2, 3, 16, 16, "causal", 4.0), (torch.bfloat16, 1, 2, 8, 100, "none", 4.0),
        (torch.bfloat16, 2, 2, 5, 64, "per head", 30.0), (torch.float16, 2, 2, 16, 48, "causal", 4.0),
        (torch.float32, 1, 2, 7, 33, "causal", 4.0), (torch.bfloat16, 1, 1, 3, 1, "none", 1.0),
        (torch.bfloat16, 1, 1, 4, 7, "causal", 200.0), (torch.bfloat16, 1, 1, 2, 1024, "none", 8.0),
        (torch.float32, 2, 2, 8, 512, "causal", 4.0), (torch.float32, 1, 1, 4, 1000, "none", 8.0),
    ]
    for dtype, batch, heads, queries, row, kind, spread in cases:
        scores = (torch.randn(batch, heads, queries, row) * spread).to(dtype)
        if kind == "causal":
            mask = _causal(batch, row, dtype)[:, :, :queries, :]
        elif kind == "per head":
            mask = (torch.randn(batch, heads, queries, row) * 3).to(dtype)
        else:
            mask = None
        scaling = 0.08838834764831845  # 1/sqrt(128)
        expected = cuda_order_softmax(scores, scaling, mask)
        got = fused_softmax.scaled_masked_softmax_(scores.clone(), scaling, mask, interpreted=True)
        order_told |= not torch.equal(got, cuda_order_softmax(scores, scaling, mask, lane_order=False))
        rows.append({"case": f"{str(dtype)[6:]} {batch}x{heads}x{queries}x{row} {kind} {spread}",
                     "identical": bool(torch.equal(got, expected)),
                     "near_torch": bool(torch.allclose(got.float(), torch.softmax(
                         scores.float() * scaling + (0 if mask is None else mask.float()), dim=-1), atol=1e-2))})
    return rows, order_told


def rotary_cases() -> list[dict]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(1)
    rows = []
    for dtype, batch, heads, kv_heads, tokens, dim, cos_batch in (
        (torch.bfloat16, 2, 4, 2, 24, 64, 2), (torch.float16, 1, 2, 1, 5, 8, 1),
        (torch.float32, 2, 2, 2, 3, 16, 2), (torch.bfloat16, 1, 3, 1, 17, 96, 1),
    ):
        # the projections' transposed views, as the attention module makes them
        q = torch.randn(batch, tokens, heads, dim).to(dtype).transpose(1, 2)
        k = torch.randn(batch, tokens, kv_heads, dim).to(dtype).transpose(1, 2)
        angles = torch.rand(cos_batch, tokens, dim) * 40
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        expected = apply_rotary_pos_emb(q, k, cos, sin)
        got = fused_rotary.rotary(q, k, cos, sin)
        rows.append({"case": f"{str(dtype)[6:]} {batch}x{heads}/{kv_heads}x{tokens}x{dim} cos batch {cos_batch}",
                     "identical": all(torch.equal(a, b) for a, b in zip(got, expected)),
                     "contiguous": all(t.is_contiguous() for t in got)})
    return rows


if __name__ == "__main__":
    softmax, order_told = softmax_cases()
    print(json.dumps({"softmax": softmax, "lane_order_matters": order_told, "rotary": rotary_cases()}))
