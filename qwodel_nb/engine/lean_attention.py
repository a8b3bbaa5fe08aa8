"""Eager attention with its softmax in one pass, for the fast search's exact passes on a GPU.

The exact passes of an attention parent run eager attention, as llm-compressor calibrates and as
the stock search evaluates. transformers' eager attention ends in
``softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)``: for a bf16 score matrix PyTorch
converts the matrix to float32 (a pass), soft-maxes it into a float32 matrix and converts that
back (two more), over batch x heads x T x T values. PyTorch's CUDA softmax of the bf16 matrix
itself loads each value as float32, computes in float32 and rounds its result once: for rows of
at most ``MAX_ROW`` values both take the same one-warp kernel, so the values are the same. On the
Llama-3-8B shape those three passes were about 8% of the fast search's GPU kernel time
(bench/RESULTS.md, "Eager attention's softmax in one pass"). The scaling and the mask are applied
in place here: the same roundings, without a new matrix for each.

:func:`lean_eager_attention` is registered with transformers as the attention implementation
``NAME``; :func:`plan` gives the switch of a parent's attention modules to it for a pass. Nothing is
assumed of a model: the first call for a kind of attention module, device and dtype also runs the
model's own eager function on the same inputs and compares the outputs bit for bit. Where they
differ (another model's eager attention: soft-capping, sinks, another mask rule), that kind keeps
its own eager function for the rest of the process. Rows longer than ``MAX_ROW``, training mode
and devices other than CUDA GPUs always take the model's own function.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from .search_attention import AttentionSwitch, attention_modules, configs_of

#: the implementation's name in transformers' attention interface
NAME = "qwodel_lean_eager"
#: devices where the lean form is tried (its equality is PyTorch's CUDA softmax's property)
DEVICES = ("cuda",)
#: the longest rows for which both softmax calls take PyTorch's one-warp kernel
MAX_ROW = 1024
#: switched off by the benchmarks to compare
ENABLED = True

#: per (attention class, device, dtype): whether the lean form gave the model's eager outputs
_VERDICTS: dict[tuple, bool] = {}


def verdicts() -> dict[str, bool]:
    """The checks made in this process, by attention class name (for the search summary)."""
    return {f"{cls.__name__} {device} {str(dtype).removeprefix('torch.')}": ok for (cls, device, dtype), ok in _VERDICTS.items()}


def _model_function(module: torch.nn.Module, name: str) -> Callable | None:
    """A function of the module's modeling file (``eager_attention_forward``, which ``"eager"``
    runs; ``repeat_kv``)."""
    return getattr(sys.modules.get(type(module).__module__), name, None)


def _lean(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attention_mask: torch.Tensor | None, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's eager attention (``modeling_llama.eager_attention_forward``) with the scaling and the
    mask applied in place and the softmax computed from and into the scores' dtype."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups != 1:  # each key/value head serves ``groups`` query heads: the modeling file's own repeat
        repeat = _model_function(module, "repeat_kv")
        if repeat is None:
            raise RuntimeError(f"{type(module).__name__}: no repeat_kv to share key/value heads")
        key, value = repeat(key, groups), repeat(value, groups)
    weights = torch.matmul(query, key.transpose(2, 3)).mul_(scaling)
    if attention_mask is not None:
        weights.add_(attention_mask)
    weights = torch.softmax(weights, dim=-1)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def lean_eager_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                         **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's eager attention, in fewer passes where that was found to give its outputs."""
    eager = _model_function(module, "eager_attention_forward")
    if eager is None:
        raise RuntimeError(f"{type(module).__name__}: no eager attention function to follow")
    rows = key.shape[-2]
    mask_fits = attention_mask is None or (attention_mask.dtype == query.dtype
                                           and _broadcasts_into(attention_mask.shape, (*query.shape[:-1], rows)))
    if (module.training or query.device.type not in DEVICES or rows > MAX_ROW or not mask_fits
            or query.dtype not in (torch.bfloat16, torch.float16, torch.float32)):
        return eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    verdict_key = (type(module), query.device, query.dtype)
    verdict = _VERDICTS.get(verdict_key)
    if verdict is False:
        return eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    try:
        lean = _lean(module, query, key, value, attention_mask, scaling)
    except torch.cuda.OutOfMemoryError:
        raise  # the run's back-off handles it
    except RuntimeError:  # a module this form does not fit (its shapes, say): its own function from now on
        _VERDICTS[verdict_key] = False
        return eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if verdict is None:  # once per kind, device and dtype: the model's own function on the same inputs
        expected = eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        _VERDICTS[verdict_key] = bool(lean[0].shape == expected[0].shape and torch.equal(lean[0], expected[0]))
        return expected
    return lean


def _broadcasts_into(shape: Any, target: tuple) -> bool:
    """Whether a tensor of ``shape`` can be added in place to one of ``target``."""
    try:
        return torch.broadcast_shapes(tuple(shape), target) == tuple(target)
    except RuntimeError:
        return False


def _register() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the interface
        return False
    AttentionInterface.register(NAME, lean_eager_attention)
    return True


def plan(parent: torch.nn.Module, device: torch.device) -> AttentionSwitch | None:
    """The lean form for the attention modules inside ``parent`` (those that take their
    implementation from the config), or None: not enabled, not a device of ``DEVICES``, no such
    module, one not under eager attention or without a modeling file's eager function, or no
    interface to register with."""
    if not ENABLED or device.type not in DEVICES:
        return None
    modules = attention_modules(parent)
    if not modules:
        return None
    if any(m.config._attn_implementation != "eager" or _model_function(m, "eager_attention_forward") is None
           for m in modules):
        return None
    if not _registered:  # once per process
        if not _register():
            return None
        _registered.append(NAME)
    return AttentionSwitch(configs_of(modules), NAME)


_registered: list[str] = []  # NAME, once registered with transformers
