"""AWQ's calibration hooks, recording what llm-compressor 0.14's record, with less host work.

While a decoder layer runs on the calibration batches, ``AWQModifier`` records two things per
mapping with forward hooks (``_setup_activation_cache_hooks``):

* the parent's call arguments, bound to its ``forward`` signature, to replay the parent later; the
  stock hook builds that signature again on every call (``inspect.signature`` of the bound method);
* the sum over tokens of the balance layers' absolute input, in float32, and the token count;
  the stock hook copies each batch's sum to the CPU (``.cpu()``) and adds it there, so the host
  waits for the GPU to finish the layer's queued work once per mapping and batch.

These hooks compute the same values with the same operations. The signature is made once per
kind of parent (three on SmolLM2, instead of one per parent and batch). The sums stay on the device
where they are computed and are added batch by batch in the same order, so they are the same
float32 values bit for bit (an addition rounds the same way on either device); the token count
stays a CPU tensor, as stock keeps it, and the search divides the sum by it on the device, as stock
does. Neither hook makes the host wait where stock's would not (a loss mask's boolean selection
still does, as in stock). Measured on SmolLM2-135M on the H200: see bench/RESULTS.md.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch


def parent_arguments_hook(record: Callable[[torch.nn.Module, dict[str, Any]], None]) -> Callable:
    """A forward pre-hook (``with_kwargs=True``) handing ``record`` the parent's arguments by name, as
    llm-compressor's ``cache_parent_kwargs_hook`` binds them (``**kwargs`` flattened, a quantized
    KV cache replaced by None)."""
    from compressed_tensors.modeling.kvcache import QuantizedKVCache

    signatures: dict[tuple[Any, bool], inspect.Signature] = {}

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        forward = module.forward
        function = getattr(forward, "__func__", None)
        # the signature inspect.signature gives depends only on the function it unwraps to and on
        # whether it is bound (compressed-tensors wraps each module's forward in a closure of its
        # own, with functools.wraps): one per class of parent instead of one per call
        key = (inspect.unwrap(function if function is not None else forward, stop=_has_signature), function is not None)
        signature = signatures.get(key)
        if signature is None:
            signature = signatures[key] = inspect.signature(forward)
        arguments = signature.bind(*args, **kwargs).arguments
        arguments |= arguments.pop("kwargs", {})
        for name, value in arguments.items():
            if isinstance(value, QuantizedKVCache):
                arguments[name] = None
        record(module, arguments)

    return hook


def _has_signature(function: Any) -> bool:
    return hasattr(function, "__signature__")


def batch_sum(activations: torch.Tensor) -> tuple[torch.Tensor, int]:
    """What llm-compressor's activation hook adds for the current calibration batch: the float32
    sum over token rows of ``|activations|`` (the batch's loss mask applied, where there is one),
    on the activations' device, and the number of token rows."""
    from llmcompressor.core import active_session

    flat = activations.abs().detach().flatten(0, -2)
    state = active_session().state
    masks = state.loss_masks if state else None
    batch = state.current_batch_idx if state else -1
    mask = masks[batch] if masks and batch >= 0 else None
    if mask is not None:
        flat = flat[mask.to(flat.device).unsqueeze(-1).flatten(0, -2).squeeze(-1).bool()]
    return flat.float().sum(dim=0), flat.size(0)


def activation_sum_hook(stats: dict[str, list], smooth_name: str) -> Callable:
    """A forward hook adding the batch's absolute inputs (token rows, loss mask applied) into
    ``stats[smooth_name] = [float32 sum over tokens, on the device; token count, a CPU tensor]``."""

    def hook(_module: torch.nn.Module, args: tuple, _output: Any) -> None:
        total, rows = batch_sum(args[0])
        count = torch.tensor(rows)
        entry = stats.get(smooth_name)
        if entry is None:
            entry = stats[smooth_name] = [torch.zeros_like(total), torch.zeros_like(count)]
        entry[0] += total
        entry[1] += count

    return hook
