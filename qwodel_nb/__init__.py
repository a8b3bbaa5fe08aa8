"""qwodel-nb: 4-bit AWQ (W4A16) quantization of Hugging Face causal LMs for vLLM, notebook first.

The engine (``qwodel_nb.engine``) runs llm-compressor 0.14; :class:`Quantizer` is the
qwodel-compatible facade over it, and ``qwodel`` the command line. In notebooks,
``%load_ext qwodel_nb`` adds the ``%%qwodel`` and ``%qwodel`` magics (:mod:`qwodel_nb.magics`), and
:func:`panel` opens the widget panel (:mod:`qwodel_nb.widgets`).
"""

from __future__ import annotations

import logging

from .engine.errors import (
    CalibrationDataError,
    GpuOutOfMemoryError,
    ModelNotFoundError,
    ResourceError,
    OutputError,
    QwodelError,
    SettingsError,
    CancelledError,
    StateError,
    UnsupportedModelError,
)
from .quantizer import Quantizer
from .session import Session

__version__ = "0.1.0"

# A library logs, the application decides where records go (the CLI and the progress bar show
# what matters themselves).
logging.getLogger("qwodel_nb").addHandler(logging.NullHandler())


def panel(session: Session | None = None, **options):
    """The widget panel over ``session``, or over a new Session made from ``options``.

    ``options``: any Session/Quantizer option (model, output, calibration_dataset...), plus
    ``run_mode`` ("auto", "thread" or "foreground") and ``preview_rows``. Display the returned
    panel, or end a cell with it. ipywidgets is imported only here.
    """
    from .widgets import open_panel

    return open_panel(session, **options)


def load_ipython_extension(shell) -> None:
    """``%load_ext qwodel_nb``: the ``%%qwodel`` and ``%qwodel`` magics (IPython is imported only here)."""
    from .magics import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell) -> None:
    """``%unload_ext qwodel_nb``."""
    from .magics import unload_ipython_extension as unload

    unload(shell)


__all__ = [
    "Quantizer",
    "Session",
    "panel",
    "QwodelError",
    "SettingsError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "CalibrationDataError",
    "OutputError",
    "StateError",
    "CancelledError",
    "ResourceError",
    "GpuOutOfMemoryError",
    "__version__",
]
