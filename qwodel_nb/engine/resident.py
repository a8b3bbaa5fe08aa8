"""Direct tensor access for a search's forward passes when nothing needs moving.

llm-compressor 0.14 puts every module of the model behind compressed-tensors' offloading, even
when the whole model sits on one GPU: each submodule's ``forward`` first walks its arguments to
move them to the execution device, and each parameter read goes through the offload cache's
mapping. With the tensors already there both are no-ops, but they are Python work on every call,
and the search calls the parent's submodules once per grid point and batch. A cProfile of one
SmolLM2 oneshot on an H200, before this module, counted 4,120 wrapped forward calls and 19,802
argument walks (bench/results/h200-attention/profile/).

:func:`direct_access` switches that off (compressed-tensors' own ``disable_onloading``) for the
duration of the passes, but only where it changes nothing: every parameter and buffer of the
parent, and every tensor of the cached arguments, already on the execution device.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Iterator

import torch


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor compressed-tensors' onloading would move (``send_tensors``): inside tuples,
    lists, dicts and dataclasses."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))


def _module_tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every parameter and buffer as stored: the offload cache's own values, not onloaded copies."""
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            values = getattr(store, "offloaded_values", store)  # an OffloadCache keeps them here
            for tensor in values.values():
                if tensor is not None:
                    yield tensor


def resident(module: torch.nn.Module, arguments: Iterable[dict[str, Any]], device: torch.device) -> bool:
    """Whether the module's parameters and buffers and every tensor of ``arguments`` are on ``device``."""
    if any(not _same(t.device, device) for t in _module_tensors(module)):
        return False
    return all(_same(t.device, device) for batch in arguments for t in _tensors(batch))


@contextlib.contextmanager
def direct_access(module: torch.nn.Module, arguments: Iterable[dict[str, Any]], device: torch.device) -> Iterator[None]:
    """Calls of ``module`` without compressed-tensors' onloading, where :func:`resident` says it
    moves nothing; otherwise as they are."""
    try:
        from compressed_tensors.offload.cache.base import OffloadCache
    except ImportError:  # an older compressed-tensors without the offload cache: nothing to skip
        yield
        return
    if not resident(module, arguments, device):
        yield
        return
    with OffloadCache.disable_onloading():
        yield
