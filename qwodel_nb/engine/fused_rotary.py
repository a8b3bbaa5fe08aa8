"""The rotary position embedding of queries and keys in one GPU kernel, with PyTorch's values bit for bit.

transformers' ``apply_rotary_pos_emb`` (Llama's, which most decoder models copy) computes
``q * cos + rotate_half(q) * sin`` with five PyTorch operations per tensor: a product with ``cos``
broadcast over the heads, a negation and a concatenation for ``rotate_half``, a product with ``sin``
and a sum, each a pass over the tensor, the broadcast ones through PyTorch's slower strided
kernel. On the Llama-3-8B shape (16 x 512 tokens, bf16, an H200) they took 0.61 ms of the attention
module's 3.39 ms (bench/RESULTS.md, "Attention's rotary embedding, scaling, mask and softmax in
fused kernels"; 0.12 ms in one kernel).
:func:`rotary` makes both tensors in one kernel with the same arithmetic: for a head dimension of
``D`` and ``d < D/2``, ``rotate_half(q)[d] = -q[d + D/2]`` and ``rotate_half(q)[d + D/2] = q[d]``;
each product is computed in float32 and rounded to the dtype, then their sum is (PyTorch's
operations on bf16 or fp16 tensors; the kernel is compiled without contracting a product and a
sum into one fused multiply-add, which would skip the float32 rounding between them).

The outputs are contiguous ``batch x heads x T x D`` tensors, where PyTorch's keep the layout of
the projections' transposed views; the values are the same, and the attention's first matrix
product then needs no copy of the queries. Whether the values are the same bit for bit is checked
on first use (:mod:`qwodel_nb.engine.lean_attention`) and measured on the GPU
(``bench/gpu_attention_kernels.py``); ``tests/test_fused_attention_kernels.py`` runs the kernel in Triton's
CPU interpreter against the model's own function.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_rounding import FLOAT_DTYPES, HAS_TRITON, KINDS, TL_DTYPES

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_rounding import rounded

#: tokens per program
BLOCK_TOKENS = 16


def supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1) -> bool:
    """Whether :func:`rotary` computes ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)`` here:
    queries and keys of ``batch x heads x T x D`` on a CUDA GPU, ``cos`` and ``sin`` of ``batch (or 1)
    x T x D``, all of one dtype, ``D`` even."""
    if not (HAS_TRITON and q.is_cuda and unsqueeze_dim == 1 and q.dim() == 4 and k.dim() == 4):
        return False
    if cos.dim() != 3 or cos.shape != sin.shape or q.dtype not in FLOAT_DTYPES:
        return False
    if any(t.dtype != q.dtype or t.device != q.device for t in (k, cos, sin)):
        return False
    batch, _, tokens, dim = q.shape
    if dim % 2 or k.shape[0] != batch or k.shape[2:] != q.shape[2:]:
        return False
    return cos.shape[0] in (1, batch) and tuple(cos.shape[1:]) == (tokens, dim)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)``, ``cos`` and ``sin``
    broadcast over the heads, each operation rounded as PyTorch rounds it; contiguous outputs."""
    return _rotated(q, cos, sin), _rotated(k, cos, sin)


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, dim = x.shape
    out = torch.empty((batch, heads, tokens, dim), dtype=x.dtype, device=x.device)
    cos = cos.expand(batch, tokens, dim)
    sin = sin.expand(batch, tokens, dim)
    grid = (batch * heads, triton.cdiv(tokens, BLOCK_TOKENS))
    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with on_device:
        _rotary_kernel[grid](
            x, cos, sin, out, heads, tokens, dim, *x.stride(), *cos.stride(), *sin.stride(),
            BLOCK=BLOCK_TOKENS, DIM=triton.next_power_of_2(dim), KIND=KINDS[x.dtype], DTYPE=TL_DTYPES[x.dtype],
            enable_fp_fusion=False,  # a product and a sum stay two roundings (float32: no rounding between them)
        )
    return out


if HAS_TRITON:
    @triton.jit
    def _rotary_kernel(
        x_ptr, c_ptr, s_ptr, out_ptr, heads, tokens, dim,
        xb, xh, xt, xd, cb, ct, cd, sb, st, sd,
        BLOCK: tl.constexpr, DIM: tl.constexpr, KIND: tl.constexpr, DTYPE: tl.constexpr,
    ):
        """One program: ``BLOCK`` tokens of one sample's head (axis 0: sample x heads)."""
        pair = tl.program_id(0)
        sample = pair // heads
        head = pair % heads
        token = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        d = tl.arange(0, DIM)
        half = dim // 2
        inside = (token[:, None] < tokens) & (d[None, :] < dim)
        partner = tl.where(d < half, d + half, d - half)
        row = sample.to(tl.int64) * xb + head.to(tl.int64) * xh + token[:, None].to(tl.int64) * xt
        x = tl.load(x_ptr + row + d[None, :] * xd, mask=inside, other=0.0).to(tl.float32)
        other = tl.load(x_ptr + row + partner[None, :] * xd, mask=inside, other=0.0).to(tl.float32)
        turned = tl.where(d[None, :] < half, -other, other)  # rotate_half: a sign, exact
        at = token[:, None].to(tl.int64)
        c = tl.load(c_ptr + sample.to(tl.int64) * cb + at * ct + d[None, :] * cd, mask=inside, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + sample.to(tl.int64) * sb + at * st + d[None, :] * sd, mask=inside, other=0.0).to(tl.float32)
        value = rounded(rounded(x * c, KIND) + rounded(turned * s, KIND), KIND)
        offsets = (pair.to(tl.int64) * tokens + token[:, None]) * dim + d[None, :]
        tl.store(out_ptr + offsets, value.to(DTYPE), mask=inside)
