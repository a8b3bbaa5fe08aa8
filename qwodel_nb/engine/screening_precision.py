"""Token screening's forward passes in bfloat16, on CPUs that multiply it in hardware.

On a CPU the fast search is bound by its matrix products (bench/RESULTS.md, "Token screening"),
and token screening runs every grid point on a slice of the samples only to decide which points
get stock's arithmetic on all tokens. The screening losses are never a choice themselves, so they
need to rank the points, not to be stock's. On a CPU with AMX (Intel Sapphire Rapids and later),
a bfloat16 matrix product runs several times faster than a float32 one (measured on this
project's 2-core machine: SmolLM2's 576 x 1536 products 6.3-7.4x faster, bench/RESULTS.md).

So where this applies, screening's passes run under PyTorch's CPU autocast in bfloat16: the
operands of every matrix product are rounded to bfloat16, the hardware accumulates in float32, and
the outputs stay in bfloat16 for the elementwise work that follows (activations, rotary
embeddings), which then moves half the bytes. The candidate weights are rounded once per chunk of
grid points, the parent's input activations once per batch. The screening reference is the same
parent with the unquantized weights, run the same way, so rounding common to both does not enter
the screening loss. Confirmations keep stock's float32 arithmetic.

Measured before choosing (bench/RESULTS.md, "Token screening in bfloat16"): replayed on the
per-sample errors of SmolLM2 and Gemma 3, the same screening rule confirmed as many points in
bfloat16 as in float32 and kept every choice.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

#: the dtype screening's matrix products run in where :func:`applies`
SCREEN_DTYPE = torch.bfloat16
#: None: where :func:`applies` says so; the speed benchmark forces it on or off to compare
LOW_PRECISION: bool | None = None


def hardware_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # an unexpected build: do without
        return False


def applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a float32 search on ``device`` screens in bfloat16 (``LOW_PRECISION`` over the CPU's default)."""
    if device.type != "cpu" or dtype != torch.float32:
        return False
    return hardware_bf16() if LOW_PRECISION is None else LOW_PRECISION


@contextlib.contextmanager
def computing_in(low: torch.dtype | None) -> Iterator[None]:
    """Matrix products in ``low`` for the duration: PyTorch's CPU autocast, which rounds the operands
    of every linear, matmul and bmm to it and returns its outputs in it; the ops that follow compute
    in their operands' dtype, promoting mixed ones. Nothing changes when ``low`` is None."""
    if low is None:
        yield
        return
    with torch.autocast("cpu", dtype=low):
        yield


def low_arguments(arguments: dict[str, Any], low: torch.dtype | None) -> dict[str, Any]:
    """A parent's cached keyword arguments with the first, the activations the balance layers take, in
    ``low`` (each balance layer would otherwise round them apart). The others stay as they are: an
    attention mask's float32 minimum, for one, would become minus infinity in bfloat16, and a fully
    masked row (padding) would then give NaN instead of eager attention's uniform weights."""
    if low is None:
        return arguments
    first = next(iter(arguments))
    value = arguments[first]
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return arguments
    return {**arguments, first: value.to(low)}
