"""PyTorch's roundings inside Triton kernels, for kernels that must give PyTorch's values bit for bit.

A PyTorch operation on bf16 or fp16 tensors computes in float32 and rounds its result to the
tensor's dtype, to nearest even. A kernel that fuses several such operations (the AWQ candidate
weights of ``fused_candidates``, the softmax of ``fused_softmax``, the rotary embedding of
``fused_rotary``) rounds after each of them with :func:`rounded`. bf16 is rounded on the bits, so
that Triton's CPU interpreter (whose own bf16 casts round ties away from even), which the tests
use, computes what the GPU does.
"""

from __future__ import annotations

import torch

try:  # Triton comes with CUDA builds of PyTorch; CPU builds have none
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the PyTorch build
    HAS_TRITON = False

#: the dtypes these kernels compute in, as PyTorch's operations do (float32 inside)
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if HAS_TRITON:
    #: Triton's dtype of a tensor's dtype, and the ``KIND`` that :func:`rounded` takes for it
    TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
    KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

    @triton.jit
    def rounded(x, KIND: tl.constexpr):
        """Round a float32 value to a tensor's dtype (KIND: 0 float32, 1 bf16, 2 fp16) and back:
        one PyTorch operation's result. bf16 rounds to nearest even on the bits, as PyTorch's
        ``c10::BFloat16`` does (and unlike Triton's interpreter, whose bf16 casts round ties up)."""
        if KIND == 1:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
            return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
        elif KIND == 2:
            return x.to(tl.float16).to(tl.float32)
        else:
            return x
else:  # pragma: no cover - depends on the PyTorch build
    TL_DTYPES, KINDS = {}, {}
