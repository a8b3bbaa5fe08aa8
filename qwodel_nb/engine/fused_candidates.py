"""AWQ's candidate weights ``Q(W * s) / s`` in one GPU kernel, bit for bit as compressed-tensors makes them.

The scale search quantizes every balance layer once per grid point. Done with PyTorch operators
(:func:`qwodel_nb.engine.awq_search.quantize_candidates`, which reproduces the stock observer round
trip), that is some fifteen passes over the weights per point, two of them in float64 because
llm-compressor's duo-scaling means are float64 (``get_high_precision``), which makes the scales
float64 too. On the Llama-3-8B shape these passes took about a third of the AWQ phase's GPU
kernel time, as much as the matrix products (bench/RESULTS.md, "The fused candidate kernel").

The kernel here makes each candidate in one pass (a program per tile of a weight group and grid
point), with the same arithmetic step by step:

1. ``W * s`` in the scales' dtype, rounded to the weight's dtype as ``Tensor.to`` does (a float64
   value goes to float32 first, then to bf16/fp16: PyTorch's conversion);
2. the group's min and max, widened to include 0;
3. scale and zero point as ``calculate_qparams`` computes them in the weight's dtype (each
   operation in float32, rounded to that dtype, as PyTorch's reduced-precision kernels do), a zero
   scale replaced by the dtype's epsilon, the zero point rounded half to even into int8;
4. ``fake_quantize``'s quantize-dequantize, operation by operation with the same rounding;
5. division by ``s`` in the scales' dtype and rounding back to the weight's dtype (on large layers
   a multiplication by the reciprocals of ``s`` where that rounds the same: ``_candidates_kernel``).

Divisions use ``div_rn`` (IEEE round to nearest, as PyTorch's CUDA division) and rounding to an
integer rounds half to even (as ``torch.round``); rounding to bf16 is done on the bits, so that
Triton's CPU interpreter (whose own bf16 casts do not round to nearest even) computes what the GPU
does.
``bench/gpu_fused_check.py`` compares the kernel with the PyTorch path bit for bit on the GPU
(H200: 75 of 75 settings identical, bench/RESULTS.md), over dtypes, group sizes, both symmetries,
scale dtypes and degenerate groups; ``tests/test_fused_candidates.py`` does the same in Triton's
interpreter on every CI run. Anything not covered (another strategy or type, a group size that is
not a power of two, stored scale or zero-point dtypes other than the weight's and int8, no Triton,
no GPU) makes :func:`supported` false and the PyTorch path is used; so does a failed check on
first use (``awq_search.fused_applies``: the kernel against the PyTorch path on a slice of the layer).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .triton_rounding import FLOAT_DTYPES, HAS_TRITON, KINDS, TL_DTYPES

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_rounding import rounded

#: rows of one group handled by one program (a tile is BLOCK_ROWS x group size)
BLOCK_ROWS = 16
#: how close to a float32 rounding boundary, in float64 ulps, a multiplied quotient may not come for
#: the kernel to keep it: it lies within 4 of the quotient (``_near_tie``); tests set 2**29 (never keep)
NEAR_TIE = 64
#: whether the last division (``/ s``) is a multiplication by the reciprocals (the same values)
RECIPROCAL = True
#: ... on layers of at least this many weights: on the H200 it took the 8B shapes' kernel from 6.75
#: to 5.0 ms (14336 x 4096, 20 points) and from 0.65 to 0.43 ms (1024 x 4096), while SmolLM2's,
#: whose time is launches, got slower (0.16 to 0.24 ms at 1536 x 576; bench/RESULTS.md)
RECIPROCAL_MIN_WEIGHTS = 1 << 21


def supported(weight: torch.Tensor, scales: torch.Tensor, args: Any, stored_scale: Any, stored_zero: Any) -> bool:
    """Whether :func:`fused_candidates` runs here and reproduces the PyTorch path for this layer."""
    return HAS_TRITON and weight.is_cuda and covered(weight, scales, args, stored_scale, stored_zero)


def covered(weight: torch.Tensor, scales: torch.Tensor, args: Any, stored_scale: Any, stored_zero: Any) -> bool:
    """Whether the kernel's arithmetic is the PyTorch path's for these dtypes and this scheme: integer
    group quantization (static, no activation ordering or scale dtype of its own) with a power-of-two
    group size, up to 8 bits, scales stored in the weight's dtype and zero points in int8."""
    from compressed_tensors.quantization import QuantizationStrategy, QuantizationType

    if weight.dim() != 2 or weight.dtype not in FLOAT_DTYPES:
        return False
    if scales.dtype not in (torch.float32, torch.float64) or scales.dim() != 2 or scales.shape[1] != weight.shape[1]:
        return False
    if args is None or args.type != QuantizationType.INT or args.strategy != QuantizationStrategy.GROUP:
        return False
    if args.dynamic or getattr(args, "actorder", None) not in (None, False) or getattr(args, "scale_dtype", None) is not None:
        return False
    size = args.group_size
    if not size or size & (size - 1) or size < 16 or size > 1024 or weight.shape[1] % size or args.num_bits > 8:
        return False
    if stored_scale is not None and stored_scale.dtype != weight.dtype:
        return False
    if getattr(args, "zp_dtype", None) not in (None, torch.int8):
        return False
    return stored_zero is None or stored_zero.dtype == torch.int8


def _constants(args: Any, dtype: torch.dtype) -> tuple[float, float, float, float]:
    """q_min, q_max, the divisor of the scale (in the weight's dtype, as ``calculate_qparams`` makes
    it) and the epsilon that replaces a zero scale."""
    q_max = 2.0 ** (args.num_bits - 1) - 1
    q_min = -(2.0 ** (args.num_bits - 1))
    bit_range = torch.tensor(q_max - q_min).to(dtype)
    divisor = bit_range / 2 if args.symmetric else bit_range
    return q_min, q_max, float(divisor.item()), float(torch.finfo(dtype).eps)


def fused_candidates(weight: torch.Tensor, scales: torch.Tensor, args: Any, reciprocal: bool | None = None) -> torch.Tensor:
    """``Q(W * s) / s`` for each row of ``scales`` [g, in]: [g, out, in] in the weight's dtype.
    ``reciprocal`` (default: ``RECIPROCAL`` on layers of ``RECIPROCAL_MIN_WEIGHTS`` or more): whether
    ``/ s`` is made as a multiplication by the reciprocals of ``s``, where that gives the same
    values (``_candidates_kernel``)."""
    weight = weight.contiguous()
    scales = scales.to(weight.device).contiguous()
    if reciprocal is None:
        reciprocal = RECIPROCAL and weight.numel() >= RECIPROCAL_MIN_WEIGHTS
    inverse = torch.reciprocal(scales.double()) if reciprocal else scales  # float64; unread without
    g = scales.shape[0]
    rows, cols = weight.shape
    out = torch.empty((g, rows, cols), dtype=weight.dtype, device=weight.device)
    q_min, q_max, divisor, eps = _constants(args, weight.dtype)
    grid = (triton.cdiv(rows, BLOCK_ROWS), cols // args.group_size, g)
    # Triton launches on the current device: make it the weight's (a layer onloaded to another GPU)
    on_device = torch.cuda.device(weight.device) if weight.is_cuda else contextlib.nullcontext()
    with on_device:
        _candidates_kernel[grid](
            weight, scales, inverse, out, rows, cols, q_min, q_max, divisor, eps,
            GROUP=args.group_size, BLOCK=BLOCK_ROWS, SYMMETRIC=bool(args.symmetric),
            DTYPE=TL_DTYPES[weight.dtype], KIND=KINDS[weight.dtype], S64=scales.dtype == torch.float64,
            NEAR=NEAR_TIE, RECIPROCAL=reciprocal,
        )
    return out


if HAS_TRITON:
    @triton.jit
    def _rint(x):
        """Round half to even, as ``torch.round``; exact for the clamped values it gets (|x| <= 128)."""
        r = tl.floor(x + 0.5)
        tie = (r - x) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(tie & odd, r - 1.0, r)

    @triton.jit
    def _near_tie(r, NEAR: tl.constexpr):
        """Whether float64 ``r``, within a few of its own ulps of a quotient, might round to float32
        otherwise than that quotient: its 29 bits below float32's precision lie within ``NEAR`` of
        one half (a float32 rounding boundary), or it is outside float32's normal range and not 0."""
        bits = r.to(tl.int64, bitcast=True)
        exponent = (bits >> 52) & 0x7FF
        below = (bits & 0x1FFFFFFF) - 0x10000000
        unusual = (exponent < 1023 - 126) | (exponent > 1023 + 127)
        return tl.where(unusual, r != 0.0, (below <= NEAR) & (below >= -NEAR))

    @triton.jit
    def _candidates_kernel(
        w_ptr, s_ptr, inv_ptr, out_ptr, rows, cols, q_min, q_max, divisor, eps,
        GROUP: tl.constexpr, BLOCK: tl.constexpr, SYMMETRIC: tl.constexpr, DTYPE: tl.constexpr, KIND: tl.constexpr, S64: tl.constexpr,
        NEAR: tl.constexpr, RECIPROCAL: tl.constexpr,
    ):
        """One program: BLOCK rows of one weight group, for one grid point (axis 2).

        With ``RECIPROCAL``, the last division (``/ s``) is a float64 multiplication by the scales'
        float64 reciprocals, rounded to float32. That product lies within 2**-51 of the quotient
        (relatively: under four of its ulps), so it rounds to float32 as the quotient does unless it lies
        next to a float32 rounding boundary (:func:`_near_tie`: about one element in four million);
        a tile with any such element divides for real. The float64 division was half the kernel's
        time on the H200 (bench/gpu_kernel_probe.py)."""
        point, col, inside, offsets, w, s = _tile(w_ptr, s_ptr, rows, cols, GROUP, BLOCK)
        # 1. W * s in the scales' dtype, then Tensor.to(weight dtype): float64 goes through float32
        if S64:
            v = (w.to(tl.float32).to(tl.float64) * s[None, :]).to(tl.float32)
        else:
            v = w.to(tl.float32) * s[None, :]
        v = rounded(v, KIND)
        q = _fake_quantized(v, q_min, q_max, divisor, eps, SYMMETRIC, KIND)  # 2. to 4.
        # 5. / s in the scales' dtype, back to the weight's dtype (float64 goes through float32)
        if RECIPROCAL:
            wide = q.to(tl.float64) * tl.load(inv_ptr + point * cols + col)[None, :]
            c = wide.to(tl.float32)
            if tl.max(_near_tie(wide, NEAR).to(tl.int32)) > 0:
                c = _quotient(q, s, S64)
        else:
            c = _quotient(q, s, S64)
        _store(out_ptr, rows, cols, point, offsets, inside, c, KIND, DTYPE)

    @triton.jit
    def _tile(w_ptr, s_ptr, rows, cols, GROUP: tl.constexpr, BLOCK: tl.constexpr):
        """This program's tile: its grid point, the group's columns, which rows exist, the tile's
        offsets in the weight, the weights and the point's scales of those columns."""
        row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        col = tl.program_id(1) * GROUP + tl.arange(0, GROUP)
        point = tl.program_id(2)
        inside = row < rows
        offsets = row[:, None].to(tl.int64) * cols + col[None, :]
        w = tl.load(w_ptr + offsets, mask=inside[:, None], other=0.0)
        s = tl.load(s_ptr + point * cols + col)
        return point, col, inside, offsets, w, s

    @triton.jit
    def _store(out_ptr, rows, cols, point, offsets, inside, c, KIND: tl.constexpr, DTYPE: tl.constexpr):
        """The tile's candidates ``c`` (float32), rounded to the weight's dtype, into the point's plane."""
        plane = rows.to(tl.int64) * cols
        tl.store(out_ptr + point * plane + offsets, rounded(c, KIND).to(DTYPE), mask=inside[:, None])

    @triton.jit
    def _fake_quantized(v, q_min, q_max, divisor, eps, SYMMETRIC: tl.constexpr, KIND: tl.constexpr):
        """Steps 2 to 4 of the module docstring on a tile ``v`` of ``W * s`` (rows x one group):
        the group's range, ``calculate_qparams`` and ``fake_quantize``, each step rounded."""
        # 2. the group's range, widened to include 0 (exact in any dtype)
        lo = tl.minimum(tl.min(v, axis=1), 0.0)
        hi = tl.maximum(tl.max(v, axis=1), 0.0)
        # 3. calculate_qparams in the weight's dtype
        if SYMMETRIC:
            scale = rounded(tl.div_rn(tl.maximum(tl.abs(lo), tl.abs(hi)), divisor), KIND)
            zero = tl.zeros_like(scale)
        else:
            scale = rounded(tl.div_rn(rounded(hi - lo, KIND), divisor), KIND)
            zero = rounded(q_min - rounded(tl.div_rn(lo, scale), KIND), KIND)
            zero = tl.minimum(tl.maximum(zero, q_min), q_max)
            # a zero range gives 0/0 = NaN, which PyTorch's int8 conversion makes 0
            zero = tl.where(scale == 0.0, 0.0, _rint(zero))
        scale = tl.where(scale == 0.0, eps, scale)
        # 4. fake_quantize: x / scale + zp, clamp, round, - zp, * scale; each step rounded
        q = rounded(tl.div_rn(v, scale[:, None]), KIND)
        q = rounded(q + zero[:, None], KIND)
        q = _rint(tl.minimum(tl.maximum(q, q_min), q_max))
        q = q - zero[:, None]  # integers of magnitude 255 at most: exact in any dtype
        return rounded(q * scale[:, None], KIND)

    @triton.jit
    def _quotient(q, s, S64: tl.constexpr):
        """``q / s`` (``s`` one scale per column), divided in the scales' dtype, as float32."""
        if S64:
            return (q.to(tl.float64) / s[None, :]).to(tl.float32)
        else:
            return tl.div_rn(q, s[None, :])
