"""Giving back the memory a failed or interrupted run held, so the next one starts clean.

Three things keep a dead run's model (and on a GPU its memory) alive after the exception:

* the exception's traceback, whose frames hold the model, the calibration caches and AWQ's
  cached activations as local variables (a notebook keeps the last traceback; a Session keeps
  its last error);
* llm-compressor's global compression session, which holds the model, the recipe's modifiers,
  their hooks and AWQ's per-layer caches until the next ``oneshot`` resets it;
* torch.fx's module-level registry of wrapped functions: llm-compressor 0.14's sequential
  pipeline recompiles the model's ``forward`` in a namespace holding the model as ``self`` and
  registers that namespace through ``torch.fx.wrap``, which keeps it for the life of the process
  (every run, finished or not, would otherwise keep its model);
* the CUDA caching allocator, which keeps freed blocks reserved for this process.

:func:`release` clears all four. The traceback of the exception is cut below the engine's entry
point (the part cut is kept as text in the exception's notes where it helps a bug report).
"""

from __future__ import annotations

import contextlib
import gc
import traceback


def detach_traceback(exc: BaseException, keep_text: bool = True) -> None:
    """Cut ``exc``'s traceback below the frame that caught it, and drop its causes' tracebacks.

    Clearing frames is not enough: a cleared frame still holds its function, and llm-compressor
    and compressed-tensors give every module its own ``forward`` closing over the module. With
    ``keep_text`` the cut part is kept as text in the exception's notes (shown by Python 3.11+
    under the traceback), for a bug report.
    """
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        if keep_text:
            text = "".join(traceback.format_tb(tb.tb_next))
            notes = getattr(exc, "__notes__", None)
            if not isinstance(notes, list):
                notes = []
                with contextlib.suppress(AttributeError, TypeError):
                    exc.__notes__ = notes
            notes.append("Library traceback (frames released to free memory):\n" + text.rstrip())
        tb.tb_next = None
    seen = {id(exc)}
    current = exc.__cause__ or exc.__context__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


def clear_traceback_frames(exc: BaseException | None) -> None:
    """Drop the local variables of the finished frames in ``exc``'s tracebacks (causes included)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]


def reset_library_session() -> None:
    """Drop llm-compressor's reference to the last model, its modifiers, hooks and caches."""
    try:
        from llmcompressor.core import active_session
    except ImportError:  # pragma: no cover - a declared dependency
        return
    session = active_session()
    with contextlib.suppress(Exception):
        for modifier in list(session.lifecycle.recipe.modifiers):
            with contextlib.suppress(Exception):
                modifier.remove_hooks()
    try:
        session.reset()
    except Exception:  # a half-run modifier that cannot finalize: drop the lifecycle as it is
        with contextlib.suppress(Exception):
            session.lifecycle.__init__()


def forget_traced_models() -> int:
    """Drop the namespaces llm-compressor's autowrap left in torch.fx's registry; returns how many.

    Only two kinds are touched: autowrap namespaces themselves (a ``"torch.fx.wrap"`` key, which
    is not a Python name, so no real module's globals has it, and a ``self`` that is a torch
    module), and the globals of the traced subgraphs' code, which hold the autowrapped functions.
    """
    import linecache

    import torch

    try:
        from torch.fx import _symbolic_trace
    except ImportError:  # pragma: no cover - torch.fx is part of torch
        return 0
    registry = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
    if not isinstance(registry, dict):
        return 0
    def autowrap_namespace(namespace: object) -> bool:
        return (isinstance(namespace, dict) and "torch.fx.wrap" in namespace
                and isinstance(namespace.get("self"), torch.nn.Module))

    def holds_autowrapped(namespace: dict) -> bool:
        return any(autowrap_namespace(getattr(value, "__globals__", None)) for value in list(namespace.values()))

    stale = [key for key, namespace in list(registry.items())
             if isinstance(namespace, dict) and (autowrap_namespace(namespace) or holds_autowrapped(namespace))]
    for key in stale:
        registry.pop(key, None)
    for name in [n for n in list(linecache.cache) if isinstance(n, str) and n.startswith("<Autowrapped ")]:
        linecache.cache.pop(name, None)
    return len(stale)


def free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with contextlib.suppress(Exception):  # a broken CUDA context has nothing more to give back
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def release(exc: BaseException | None = None, keep_text: bool = True) -> None:
    """Free what a failed, interrupted or finished run held: traceback locals, library state, GPU cache.

    ``exc`` is the exception being handled by the caller; its traceback is cut below the caller.
    """
    clear_traceback_frames(exc)
    if exc is not None:
        detach_traceback(exc, keep_text)
    reset_library_session()
    forget_traced_models()
    gc.collect()
    free_gpu_cache()
