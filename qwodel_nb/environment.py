"""Which notebook front end the kernel serves, and how the widget panel should run AWQ there.

The panel can run a quantization in two ways (:data:`RUN_MODES`):

``thread``
    AWQ runs in a background thread; the cell that opened the panel returns at once and the
    kernel stays free, so a Cancel click reaches Python through the widget comm like any other
    message. Widget traits set from the thread reach the page in JupyterLab, Jupyter Notebook and
    VS Code.

``foreground``
    AWQ runs in the kernel's main thread, inside the Run click's handler. Colab shows widget
    updates only while the kernel is busy with the message that caused them, and drops those sent
    from a background thread afterwards; a foreground run is such a message for as long as it
    lasts, so its progress shows. Between grid points the panel lets the kernel handle queued
    widget messages (see :mod:`qwodel_nb.widgets.ui_poll`), so the Cancel button still works.

``auto`` picks ``foreground`` on Colab and ``thread`` everywhere else. Nothing here imports
IPython at module level: ``import qwodel_nb`` must stay free of notebook libraries.
"""

from __future__ import annotations

import sys
from typing import Any

from .engine.errors import SettingsError

RUN_MODES = ("auto", "thread", "foreground")


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel imports ``google.colab`` at start-up)."""
    return "google.colab" in sys.modules


def ipython_kernel() -> Any | None:
    """The ipykernel ``Kernel`` this code runs under, or None (plain Python, a terminal IPython, tests)."""
    if "IPython" not in sys.modules:  # nothing imported IPython, so no kernel is running
        return None
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def resolve_run_mode(mode: str = "auto") -> str:
    """``thread`` or ``foreground`` for ``mode``; raises :class:`SettingsError` for an unknown mode."""
    if not isinstance(mode, str) or mode.strip().lower() not in RUN_MODES:
        raise SettingsError(f"run_mode must be one of {', '.join(repr(m) for m in RUN_MODES)}, not {mode!r}.")
    mode = mode.strip().lower()
    if mode == "auto":
        return "foreground" if in_colab() else "thread"
    return mode
