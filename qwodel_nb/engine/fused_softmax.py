"""Eager attention's scaling, mask and softmax in one GPU kernel, with PyTorch's values bit for bit.

Between its two matrix products, transformers' eager attention makes three passes over the
``batch x heads x T x S`` score matrix: ``scores * scaling``, ``+ attention_mask`` (a mask of
``batch x 1 x T x S`` read with a broadcast, by PyTorch's slower strided kernel) and the softmax.
On the Llama-3-8B shape (16 x 512 tokens, bf16, an H200) they took 1.30 ms of the attention
module's 3.39 ms (bench/RESULTS.md, "Attention's rotary embedding, scaling, mask and softmax in
fused kernels"). :func:`scaled_masked_softmax_` makes them one pass, in place (0.48 ms there), with
the same arithmetic step by step:

1. the product by the scaling in float32, rounded to the scores' dtype (PyTorch's ``x * scalar``);
2. the mask added in float32 and rounded (``x + mask``, both of the scores' dtype);
3. PyTorch's CUDA softmax for rows of at most ``MAX_ROW`` values (``softmax_warp_forward`` in
   ATen's PersistentSoftmax.cuh), whose order of operations decides the last bits: a row of ``n``
   values, padded with -inf to ``P``, the next power of two, is spread over ``W = min(P, 32)``
   lanes, lane ``l`` holding values ``l, l + W, l + 2W, ...``; each lane sums its
   ``exp(x - max)`` in that order, starting from 0; the lanes' sums are added by a butterfly
   (lane ``l`` and lane ``l ^ W/2``, then ``l ^ W/4``, ..., down to 1); each value is
   ``exp(x - max) / sum``, divided with IEEE rounding and rounded to the scores' dtype.

A program holds whole rows in registers: it computes each value's exponential once, regroups them
by lane (``[row, lane, the lane's values]``) and adds each lane's values in their order by taking
the first half of them, then the second, down to single values (``_in_order_*``); the butterfly is
a halving of the lanes (lane ``l`` with ``l + W/2``: the same pair as ``l ^ W/2``).
The exponential is libdevice's ``expf``, the function CUDA's ``std::exp`` is (no fast-math, no flush
of subnormals: the kernel is compiled with ``enable_reflect_ftz=False``). Whether this gives
PyTorch's softmax bit for bit is measured on the GPU (``bench/gpu_attention_kernels.py``) and
checked again on first use by :mod:`qwodel_nb.engine.lean_attention`, which compares the whole
attention output with the model's own eager function's before it keeps this form.
``tests/test_fused_attention_kernels.py`` runs the kernel in Triton's CPU interpreter (with the
interpreter's exponential) against the same order of operations written with PyTorch operators.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_rounding import FLOAT_DTYPES, HAS_TRITON, KINDS, TL_DTYPES

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_rounding import rounded

#: the longest rows PyTorch soft-maxes with its one-warp kernel (longer ones take another kernel)
MAX_ROW = 1024
#: the lanes of a CUDA warp, over which PyTorch spreads a row
WARP = 32
#: rows per program, and the warps that run it (on the H200, 8 x 4 was the fastest on the 8B shape
#: and within 5% of the fastest on SmolLM2's: bench/RESULTS.md)
BLOCK_ROWS = 8
NUM_WARPS = 4


def supported(shape: tuple, dtype: torch.dtype, device: torch.device, mask: torch.Tensor | None) -> bool:
    """Whether :func:`scaled_masked_softmax_` runs here on a contiguous score matrix of ``shape``
    (4-d) and ``dtype``: a CUDA GPU, rows of at most ``MAX_ROW`` values, and a mask of its dtype
    that broadcasts into it."""
    if not (HAS_TRITON and device.type == "cuda" and len(shape) == 4 and dtype in FLOAT_DTYPES):
        return False
    if not 0 < shape[-1] <= MAX_ROW:
        return False
    return mask is None or (mask.dtype == dtype and mask.device == device and broadcasts_into(mask.shape, shape))


def broadcasts_into(shape, target) -> bool:
    """Whether a tensor of ``shape`` can be added in place to one of ``target``."""
    try:
        return torch.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except RuntimeError:
        return False


def lanes(row: int) -> tuple[int, int]:
    """(W, P / W): the lanes a row of ``row`` values is spread over, and the values each lane holds."""
    padded = 1 << (row - 1).bit_length()  # the next power of two
    width = min(padded, WARP)
    return width, padded // width


def scaled_masked_softmax_(scores: torch.Tensor, scaling: float, mask: torch.Tensor | None,
                           interpreted: bool = False) -> torch.Tensor:
    """``softmax(scores * scaling + mask, dim=-1)`` into ``scores`` itself, as PyTorch computes it on
    a CUDA GPU for ``scores`` of a reduced-precision dtype (each step rounded; module docstring).
    ``interpreted``: in Triton's CPU interpreter, which has no libdevice (the tests). ``scores`` must
    be contiguous."""
    batch, heads, queries, row = scores.shape
    width, per_lane = lanes(row)
    if mask is not None:
        strides = mask.expand(batch, heads, queries, row).stride()
    else:
        strides = (0, 0, 0, 0)
    factor = float(torch.tensor(scaling, dtype=torch.float32))  # PyTorch multiplies by the float32 scalar
    rows = batch * heads * queries
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    on_device = torch.cuda.device(scores.device) if scores.is_cuda else contextlib.nullcontext()
    with on_device:
        _softmax_kernel[grid](
            scores, scores if mask is None else mask, rows, heads, queries, row, factor, *strides,
            HAS_MASK=mask is not None, ROWS=BLOCK_ROWS, WIDTH=width, PER_LANE=per_lane,
            LEVELS=width.bit_length() - 1, KIND=KINDS[scores.dtype], DTYPE=TL_DTYPES[scores.dtype],
            LIBDEVICE=not interpreted, num_warps=NUM_WARPS,
            enable_reflect_ftz=False, enable_fp_fusion=False,  # no flush of subnormals, no contraction
        )
    return scores


if HAS_TRITON:
    from triton.language.extra.cuda import libdevice

    @triton.jit
    def _exp(x, LIBDEVICE: tl.constexpr):
        """CUDA's ``expf`` (libdevice), or the interpreter's exponential."""
        if LIBDEVICE:
            return libdevice.exp(x)
        else:
            return tl.exp(x)

    @triton.jit
    def _logits(x_ptr, m_ptr, base, mask_base, col, inside, sj, factor, HAS_MASK: tl.constexpr, KIND: tl.constexpr):
        """Steps 1 and 2 for the columns ``col`` of the rows at ``base``: -inf outside the row."""
        x = tl.load(x_ptr + base[:, None] + col[None, :], mask=inside, other=0.0).to(tl.float32)
        y = rounded(x * factor, KIND)
        if HAS_MASK:
            m = tl.load(m_ptr + mask_base[:, None] + col[None, :].to(tl.int64) * sj, mask=inside, other=0.0)
            y = rounded(y + m.to(tl.float32), KIND)
        return tl.where(inside, y, float("-inf"))

    @triton.jit
    def _softmax_kernel(
        x_ptr, m_ptr, rows, heads, queries, n, factor, sb, sh, si, sj,
        HAS_MASK: tl.constexpr, ROWS: tl.constexpr, WIDTH: tl.constexpr, PER_LANE: tl.constexpr,
        LEVELS: tl.constexpr, KIND: tl.constexpr, DTYPE: tl.constexpr, LIBDEVICE: tl.constexpr,
    ):
        """One program: ``ROWS`` rows of the scores, soft-maxed in place."""
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        live = row < rows
        query = row % queries
        head = (row // queries) % heads
        sample = row // (queries * heads)
        base = row.to(tl.int64) * n
        mask_base = sample.to(tl.int64) * sb + head.to(tl.int64) * sh + query.to(tl.int64) * si
        # the row's maximum (any order gives the same)
        col = tl.arange(0, WIDTH * PER_LANE)
        inside = live[:, None] & (col[None, :] < n)
        y = _logits(x_ptr, m_ptr, base, mask_base, col, inside, sj, factor, HAS_MASK, KIND)
        top = tl.max(y, axis=1)
        # each lane's sum of exp(y - max), its values in order, from 0
        e = _exp(y - top[:, None], LIBDEVICE)
        held = tl.permute(tl.reshape(e, [ROWS, PER_LANE, WIDTH]), (0, 2, 1))  # [row, lane, the lane's values]
        sums = tl.zeros([ROWS, WIDTH], dtype=tl.float32)
        if PER_LANE == 1:
            sums = _in_order_1(sums, held)
        elif PER_LANE == 2:
            sums = _in_order_2(sums, held)
        elif PER_LANE == 4:
            sums = _in_order_4(sums, held)
        elif PER_LANE == 8:
            sums = _in_order_8(sums, held)
        elif PER_LANE == 16:
            sums = _in_order_16(sums, held)
        else:
            sums = _in_order_32(sums, held)
        # the butterfly: lane l with lane l + W/2, then l + W/4, ... (an addition commutes)
        for level in tl.static_range(LEVELS):
            sums = tl.sum(tl.reshape(sums, [ROWS, 2, WIDTH >> (level + 1)]), axis=1)
        total = tl.reshape(sums, [ROWS])
        out = rounded(tl.div_rn(e, total[:, None]), KIND)
        tl.store(x_ptr + base[:, None] + col[None, :], out.to(DTYPE), mask=inside)

    @triton.jit
    def _halves(t):
        """The first and the second half of the last axis of ``t`` [rows, lanes, n]."""
        pair = tl.permute(tl.reshape(t, [t.shape[0], t.shape[1], 2, t.shape[2] // 2]), (0, 1, 3, 2))
        return tl.split(pair)

    # sums += t[..., 0]; sums += t[..., 1]; ... in that order, for a last axis of 1 to 32 values:
    # one function per size, as Triton's compiler does not recurse
    @triton.jit
    def _in_order_1(sums, t):
        return sums + tl.reshape(t, [t.shape[0], t.shape[1]])

    @triton.jit
    def _in_order_2(sums, t):
        first, second = _halves(t)
        return _in_order_1(_in_order_1(sums, first), second)

    @triton.jit
    def _in_order_4(sums, t):
        first, second = _halves(t)
        return _in_order_2(_in_order_2(sums, first), second)

    @triton.jit
    def _in_order_8(sums, t):
        first, second = _halves(t)
        return _in_order_4(_in_order_4(sums, first), second)

    @triton.jit
    def _in_order_16(sums, t):
        first, second = _halves(t)
        return _in_order_8(_in_order_8(sums, first), second)

    @triton.jit
    def _in_order_32(sums, t):
        first, second = _halves(t)
        return _in_order_16(_in_order_16(sums, first), second)
