"""Eager attention in fewer passes, for the fast search's exact passes on a GPU; a few samples at
a time on a CPU.

The exact passes of an attention parent run eager attention, as llm-compressor calibrates and as
the stock search evaluates. transformers' eager attention makes many passes over tensors that a
fused kernel reads once: between its two matrix products it scales the score matrix, adds the mask
(with a broadcast over the heads) and soft-maxes it in float32, which for a bf16 matrix means a
conversion to float32 and one back; before it, the attention module rotates queries and keys
(``apply_rotary_pos_emb``: five operations per tensor). On one Llama-3-8B-shaped attention module
(16 x 512 tokens, bf16, an H200) the scaling, mask and softmax took 1.30 ms and the rotation 0.61 ms
of its 3.39 ms; with the lean forms the module took 1.91 ms (bench/RESULTS.md, "Eager attention's
softmax in one pass" and "Attention's rotary embedding, scaling, mask and softmax in fused kernels").

The lean forms here compute the same values with fewer passes, each step rounded as PyTorch rounds
it. Each attention kind tries them in the order of ``FORMS``:

* ``"fused"``: the scaling, the mask and the softmax in one kernel (engine/fused_softmax.py);
* ``"plain"``: the scaling and the mask in place, and PyTorch's softmax of the bf16 matrix itself,
  which loads each value as float32, computes in float32 and rounds once: for rows of at most
  ``MAX_ROW`` values it is the same one-warp kernel as the float32 softmax, so the same values.

While a parent's passes run, the modeling file's ``apply_rotary_pos_emb`` (Llama's signature) is
replaced by one that rotates queries and keys in one kernel (engine/fused_rotary.py).

Nothing is assumed of a model: the first call of a form for a kind of attention module, device and
dtype also runs the model's own eager function on the same inputs and compares the outputs bit for
bit, and the first fused rotation for a modeling file, device and dtype is compared with the file's
own function. A form that differs (another model's eager attention: soft-capping, sinks, another
mask rule) or raises is dropped for that kind for the rest of the process; the next form is tried,
then the model's own function. Rows longer than ``MAX_ROW`` and training mode always take the
model's own function.

On a CPU (``CHUNKED_DEVICES``) the one form is ``"chunked"``: the model's own eager function called
on a few samples at a time, so that each call's score matrices are small enough for the allocator
to reuse their memory instead of taking fresh pages from the kernel (engine/chunked_attention.py),
checked on first use in the same way, under autocast apart. The rotation is left alone there.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from . import chunked_attention, fused_rotary, fused_softmax
from .search_attention import AttentionSwitch, attention_modules, configs_of

#: the implementation's name in transformers' attention interface
NAME = "qwodel_lean_eager"
#: devices where the lean forms are tried (their equality is a property of PyTorch's CUDA kernels)
DEVICES = ("cuda",)
#: devices where the chunked form is tried instead (engine/chunked_attention.py)
CHUNKED_DEVICES = ("cpu",)
CHUNKED = "chunked"
#: the longest rows for which both softmax calls take PyTorch's one-warp kernel
MAX_ROW = 1024
#: the lean forms, in the order tried (module docstring)
FORMS = ("fused", "plain")
#: the rotary function replaced while a parent's passes run, and its parameters (Llama's)
ROTARY = "apply_rotary_pos_emb"
ROTARY_PARAMETERS = ("q", "k", "cos", "sin", "unsqueeze_dim")
#: switched off by the benchmarks to compare: the lean forms, and their fused kernels alone
ENABLED = True
FUSED = True

#: per (attention class, device, dtype, form): whether the form gave the model's eager outputs
_VERDICTS: dict[tuple, bool] = {}
#: per (modeling file's rotary function, device, dtype): whether the fused rotation gave its outputs
_ROTARY_VERDICTS: dict[tuple, bool] = {}


def verdicts() -> dict[str, bool]:
    """The checks made in this process (for the search summary): by attention class and form, and
    by modeling file for the rotation."""
    found = {f"{cls.__name__} {device} {_name(dtype)} {form}": ok for (cls, device, dtype, form), ok in _VERDICTS.items()}
    for (function, device, dtype), ok in _ROTARY_VERDICTS.items():
        found[f"{ROTARY} ({function.__module__}) {device} {_name(dtype)}"] = ok
    return found


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_function(module: torch.nn.Module, name: str) -> Callable | None:
    """A function of the module's modeling file (``eager_attention_forward``, which ``"eager"``
    runs; ``repeat_kv``; ``apply_rotary_pos_emb``)."""
    return getattr(sys.modules.get(type(module).__module__), name, None)


def _lean(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attention_mask: torch.Tensor | None, scaling: float, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's eager attention (``modeling_llama.eager_attention_forward``) with the scaling, the
    mask and the softmax computed in one kernel (``form`` "fused") or in place, from and into the
    scores' dtype ("plain")."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups != 1:  # each key/value head serves ``groups`` query heads: the modeling file's own repeat
        repeat = _model_function(module, "repeat_kv")
        if repeat is None:
            raise RuntimeError(f"{type(module).__name__}: no repeat_kv to share key/value heads")
        key, value = repeat(key, groups), repeat(value, groups)
    weights = torch.matmul(query, key.transpose(2, 3))
    if form == "fused":
        weights = fused_softmax.scaled_masked_softmax_(weights, scaling, attention_mask)
    else:
        weights.mul_(scaling)
        if attention_mask is not None:
            weights.add_(attention_mask)
        weights = torch.softmax(weights, dim=-1)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def lean_eager_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                         **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's eager attention, in fewer passes (on a CPU, a few samples at a time) where that
    was found to give its outputs."""
    eager = _model_function(module, "eager_attention_forward")
    if eager is None:
        raise RuntimeError(f"{type(module).__name__}: no eager attention function to follow")

    def own() -> tuple[torch.Tensor, torch.Tensor]:
        return eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    if not module.training and query.device.type not in DEVICES and query.device.type in CHUNKED_DEVICES:
        return _chunked(eager, module, query, key, value, attention_mask, scaling, dropout, own, kwargs)
    shape = (*query.shape[:-1], key.shape[-2])
    mask_fits = attention_mask is None or (attention_mask.dtype == query.dtype
                                           and fused_softmax.broadcasts_into(attention_mask.shape, shape))
    if (module.training or query.device.type not in DEVICES or shape[-1] > MAX_ROW or not mask_fits
            or query.dtype not in (torch.bfloat16, torch.float16, torch.float32)):
        return own()
    for form in FORMS:
        if form == "fused" and not (FUSED and fused_softmax.supported(shape, query.dtype, query.device, attention_mask)):
            continue
        found = _checked(_VERDICTS, (type(module), query.device, query.dtype, form),
                         lambda: _lean(module, query, key, value, attention_mask, scaling, form), own,
                         lambda mine, theirs: _same(mine[:1], theirs[:1]))
        if found is not None:
            return found
    return own()


def _chunked(eager: Callable, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attention_mask: torch.Tensor | None, scaling: float, dropout: float, own: Callable,
             kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's eager attention a few samples at a time, where that was found to give its
    outputs; the whole batch at once where it fits one call or the form was dropped."""
    rows = chunked_attention.rows_per_chunk(query, key)
    if rows >= query.shape[0]:
        return own()
    # under autocast (token screening's bfloat16 products) the calls compute otherwise: a kind of its own
    autocast = torch.is_autocast_enabled(query.device.type)
    form = f"{CHUNKED} under {_name(torch.get_autocast_dtype(query.device.type))} autocast" if autocast else CHUNKED
    found = _checked(_VERDICTS, (type(module), query.device, query.dtype, form),
                     lambda: chunked_attention.attention(eager, module, query, key, value, attention_mask, scaling,
                                                         dropout, rows, **kwargs),
                     own, lambda mine, theirs: _same(mine[:1], theirs[:1]))
    return found if found is not None else own()


def _checked(verdicts: dict, verdict_key: tuple, lean: Callable, own: Callable, same: Callable) -> Any:
    """``lean()``'s result where the kind at ``verdict_key`` was found to give ``own()``'s (``same``);
    on the first call, ``own()``'s, after comparing the two; None where the kind's lean form was
    dropped (it differed, or raised), or is dropped now because it raised."""
    verdict = verdicts.get(verdict_key)
    if verdict is False:
        return None
    try:
        mine = lean()
    except torch.cuda.OutOfMemoryError:
        raise  # the run's back-off handles it
    except RuntimeError:  # a module this form does not fit (its shapes, say): not this form from now on
        verdicts[verdict_key] = False
        return None
    if verdict is None:  # once per kind: the model's own function on the same inputs
        theirs = own()
        verdicts[verdict_key] = bool(same(mine, theirs))
        return theirs
    return mine


def _same(mine: tuple, theirs: tuple) -> bool:
    """Whether two tuples of tensors are the same, bit for bit."""
    return all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(mine, theirs))


def _lean_rotary(original: Callable) -> Callable:
    """``apply_rotary_pos_emb`` of a modeling file (``original``) with queries and keys rotated in one
    kernel, where that was found to give its outputs."""

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        def own() -> tuple[torch.Tensor, torch.Tensor]:
            return original(q, k, cos, sin, unsqueeze_dim)

        if q.device.type not in DEVICES or not fused_rotary.supported(q, k, cos, sin, unsqueeze_dim):
            return own()
        found = _checked(_ROTARY_VERDICTS, (original, q.device, q.dtype), lambda: fused_rotary.rotary(q, k, cos, sin),
                         own, _same)
        return found if found is not None else own()

    apply_rotary_pos_emb.original = original
    return apply_rotary_pos_emb


def _rotary_namespace(module: torch.nn.Module) -> dict | None:
    """The globals of the module's modeling file where its forward finds ``apply_rotary_pos_emb``,
    if that function has Llama's parameters."""
    found = sys.modules.get(type(module).__module__)
    function = getattr(found, ROTARY, None)
    if function is None or not callable(function):
        return None
    try:
        parameters = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    return vars(found) if parameters == ROTARY_PARAMETERS else None


@dataclass
class LeanSwitch(AttentionSwitch):
    """For the duration of a pass: the lean attention implementation in the modules' configs, and
    the lean rotation in their modeling files."""

    namespaces: list[dict] = field(default_factory=list)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = [(namespace, namespace[ROTARY]) for namespace in self.namespaces]
        try:
            for namespace, function in saved:
                namespace[ROTARY] = _lean_rotary(getattr(function, "original", function))
            with super().active():
                yield
        finally:
            for namespace, function in saved:
                namespace[ROTARY] = function


def _register() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the interface
        return False
    AttentionInterface.register(NAME, lean_eager_attention)
    return True


def plan(parent: torch.nn.Module, device: torch.device) -> LeanSwitch | None:
    """The lean forms for the attention modules inside ``parent`` (those that take their
    implementation from the config), or None: not enabled, a device of neither ``DEVICES`` nor
    ``CHUNKED_DEVICES``, no such module, one not under eager attention or without a modeling
    file's eager function, or no interface to register with."""
    if not ENABLED or device.type not in DEVICES + CHUNKED_DEVICES:
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
    namespaces: list[dict] = []
    for module in modules if FUSED and device.type in DEVICES else ():
        namespace = _rotary_namespace(module)
        if namespace is not None and all(namespace is not n for n in namespaces):
            namespaces.append(namespace)
    return LeanSwitch(configs_of(modules), NAME, namespaces)


_registered: list[str] = []  # NAME, once registered with transformers
