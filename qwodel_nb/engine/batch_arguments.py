"""The cached keyword arguments of an AWQ parent module: which of them follow the batch.

llm-compressor caches, per calibration batch, the keyword arguments each parent module was called
with. The first is the input the balance layers see; its leading dimension is the batch. Other
tensors of two or more dimensions whose leading size equals the batch (position embeddings, masks
made per sample) follow it; tensors with a leading size of one broadcast over it. The fast search
repeats the batch for several grid points (``awq_search.repeat_batch``) and token screening cuts
it to its first samples (``awq_screening.cut_arguments``), both by this rule.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def rows_and_tokens(arguments: dict[str, Any]) -> tuple[int, int]:
    """Samples and tokens of one cached batch: the first argument's leading size, and its
    elements over its last dimension."""
    first = next(iter(arguments.values()))
    return first.shape[0], first.numel() // first.shape[-1]


def map_batch(arguments: dict[str, Any], change: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """``arguments`` with ``change`` applied to every tensor that follows the batch, inside tuples
    and lists too; everything else as it is. The first argument must be a tensor."""
    first_key = next(iter(arguments))
    batch = arguments[first_key].shape[0]

    def visit(value: Any, primary: bool = False) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() >= 2 and value.shape[0] == batch and (primary or batch > 1):
                return change(value)
            return value
        if isinstance(value, tuple):
            return tuple(visit(v) for v in value)
        if isinstance(value, list):
            return [visit(v) for v in value]
        return value

    return {key: visit(value, primary=(key == first_key)) for key, value in arguments.items()}
