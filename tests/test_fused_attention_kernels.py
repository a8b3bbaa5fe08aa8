"""engine/fused_softmax.py and engine/fused_rotary.py: the fused attention kernels, bit for bit.

CI has no GPU, so the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before
Triton is first imported: hence a subprocess, tests/attention_interpreter_check.py). There the
softmax is compared with PyTorch's CUDA order of operations written with PyTorch operators, and the
rotation with transformers' own function. On the GPU the comparison with PyTorch's own kernels is
bench/gpu_attention_kernels.py's.
"""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine import fused_rotary, fused_softmax
from triton_interpreter import interpreted  # tests/triton_interpreter.py


def test_kernels_in_the_triton_interpreter_give_the_cuda_order_of_operations():
    pytest.importorskip("triton")  # `make test` installs it (Makefile: TRITON)
    result = interpreted("attention_interpreter_check.py")
    assert len(result["softmax"]) == 10 and len(result["rotary"]) == 4
    assert [r["case"] for r in result["softmax"] if not (r["identical"] and r["near_torch"])] == []
    assert [r["case"] for r in result["rotary"] if not (r["identical"] and r["contiguous"])] == []
    # the lanes' order matters: a plain sum of a row's exponentials differs in float32
    assert result["lane_order_matters"]


def test_rows_are_spread_over_lanes_as_pytorch_spreads_them():
    assert fused_softmax.lanes(512) == (32, 16)
    assert fused_softmax.lanes(1024) == (32, 32)
    assert fused_softmax.lanes(100) == (32, 4)  # padded to 128
    assert fused_softmax.lanes(7) == (8, 1)  # rows shorter than a warp take fewer lanes
    assert fused_softmax.lanes(1) == (1, 1)


def test_the_kernels_run_only_where_they_are_pytorch_s_arithmetic():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    mask = torch.zeros(2, 1, 16, 16)
    assert not fused_softmax.supported((2, 4, 16, 16), torch.float32, cpu, mask)  # the CPU: PyTorch's operators
    if fused_softmax.HAS_TRITON:
        assert fused_softmax.supported((2, 4, 16, 16), torch.float32, gpu, None)
        assert not fused_softmax.supported((2, 4, 16, 2048), torch.float32, gpu, None)  # PyTorch's other kernel
        assert not fused_softmax.supported((2, 4, 16, 16), torch.float64, gpu, None)
    q = torch.zeros(2, 4, 16, 8)
    k = torch.zeros(2, 2, 16, 8)
    cos = torch.zeros(1, 16, 8)
    assert not fused_rotary.supported(q, k, cos, cos)  # the CPU
