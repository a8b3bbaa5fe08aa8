"""The fused AWQ candidate kernel: the PyTorch path's arithmetic, bit for bit.

CI has no GPU, so the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, which must be
set before Triton is first imported: hence a subprocess). On the GPU the same comparison is
bench/gpu_fused_check.py's. Everything else here runs in this process.
"""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine import awq_search
from qwodel_nb.engine.fused_candidates import _constants, covered, supported
from triton_interpreter import interpreted  # tests/triton_interpreter.py


def _scheme(symmetric: bool = False, group: int = 64, strategy: str | None = None, num_bits: int = 4):
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme("W4A16" if symmetric else "W4A16_ASYM", ["Linear"])
    scheme.weights.group_size = group
    scheme.weights.num_bits = num_bits
    if strategy is not None:
        scheme.weights.strategy = strategy
    return scheme.weights


def test_kernel_in_the_triton_interpreter_is_bit_identical_to_the_pytorch_path():
    pytest.importorskip("triton")  # `make test` installs it (Makefile: TRITON)
    result = interpreted("fused_interpreter_check.py")
    assert result["helpers"] == {"bf16": True, "fp16": True, "rint": True}
    assert [name for name, right in result["near_ties"].items() if not right] == []
    # the divisions as multiplications (the default), every tile taken for near a tie (the
    # fallback), and the kernel dividing throughout
    for rows in (result["candidates"], result["candidates_near_ties"], result["candidates_dividing"]):
        assert len(rows) == 24  # 3 weight dtypes x 2 symmetries x 2 scale dtypes x 2 group sizes
        assert [r["case"] for r in rows if not r["identical"]] == []
        assert all(r["distinct_points"] for r in rows)
    # the search's first-use check passes the kernel and turns away one that raises or differs
    assert result["self_check"] == {"kernel": True, "raises": False, "differs": False}


def test_the_kernel_is_used_only_on_a_gpu():
    weight = torch.zeros(8, 64)
    scales = torch.ones(2, 64, dtype=torch.float64)
    args = _scheme()
    assert covered(weight, scales, args, None, None)
    assert not supported(weight, scales, args, None, None)  # a CPU tensor: the PyTorch path
    assert not awq_search.fused_applies(torch.nn.Linear(64, 8), weight, scales, args)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, True),
        ({"symmetric": True}, True),
        ({"group": 128}, True),
        ({"num_bits": 8}, True),
        ({"group": 96}, False),  # not a power of two
        ({"strategy": "channel"}, False),
        ({"weight_dtype": torch.float64}, False),
        ({"stored_scale": torch.float32}, False),  # bf16 weights, float32 scales: other arithmetic
        ({"stored_zero": torch.int32}, False),
        ({"columns": 96}, False),  # the group size does not divide the columns
    ],
)
def test_covered_settings(change, expected):
    columns = change.get("columns", 256)
    weight = torch.zeros(8, columns, dtype=change.get("weight_dtype", torch.bfloat16))
    scales = torch.ones(3, columns, dtype=torch.float64)
    args = _scheme(change.get("symmetric", False), change.get("group", 64), change.get("strategy"), change.get("num_bits", 4))
    stored_scale = torch.zeros(1, dtype=change.get("stored_scale", weight.dtype))
    stored_zero = torch.zeros(1, dtype=change.get("stored_zero", torch.int8))
    assert covered(weight, scales, args, stored_scale, stored_zero) is expected


def test_constants_are_calculate_qparams_own():
    """q range, the scale's divisor as calculate_qparams forms it in the weight's dtype, and the
    epsilon that replaces a zero scale."""
    assert _constants(_scheme(symmetric=False), torch.bfloat16) == (-8.0, 7.0, 15.0, 0.0078125)
    assert _constants(_scheme(symmetric=True), torch.bfloat16) == (-8.0, 7.0, 7.5, 0.0078125)
    assert _constants(_scheme(symmetric=False, num_bits=8), torch.float16) == (-128.0, 127.0, 255.0, 2.0**-10)
