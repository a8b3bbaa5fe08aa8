"""Errors a user can cause and fix.

Every exception in this module carries a one-line message that says what went wrong and
what to do about it. The CLI prints it as one line and exits with code 2, the notebook
layers show it as a message block; neither shows a traceback for these.
"""

from __future__ import annotations


class QwodelError(Exception):
    """Base class of every error that the user can fix by changing the input."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return self.args[0]


class SettingsError(QwodelError, ValueError):
    """A setting has a wrong type or value."""


class ModelNotFoundError(QwodelError, FileNotFoundError):
    """The model folder or hub id cannot be found or read."""


class UnsupportedModelError(QwodelError):
    """The model cannot be quantized with AWQ as asked (architecture, layer shapes, remote code)."""


class CalibrationDataError(QwodelError, ValueError):
    """The calibration data cannot be read or holds too little usable text."""


class OutputError(QwodelError):
    """The output folder exists and is not empty, or cannot be written."""


class ResourceError(QwodelError):
    """The machine lacks something the run needs: disk space, CPU memory or GPU memory."""


class GpuOutOfMemoryError(ResourceError):
    """The GPU ran out of memory even with the smallest calibration settings that were tried."""


class StateError(QwodelError, RuntimeError):
    """An operation was asked for in a state that does not allow it."""


class CancelledError(QwodelError):
    """A run was cancelled by the user; nothing was written."""

    exit_code = 130


class RunCancelled(BaseException):
    """Raised inside a run when the user cancelled it.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    (in llm-compressor or a listener) swallows it; the output staging removes what was written.
    """


class InterruptedAfterOutput(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM that landed after the output folder was moved into place.

    The output at :attr:`output_path` is complete and stays; only what came after it (freeing
    memory, printing the summary, an evaluation) was cut short. A ``KeyboardInterrupt``, so every
    place that stops on an interrupt still stops; the ones that report it say the truth with it.
    """

    def __init__(self, output_path: str):
        super().__init__(output_path)
        self.output_path = output_path


def interrupted_message(exc: BaseException) -> str:
    """What a Ctrl-C (a kernel interrupt) did to a run, in one sentence for the notebook layers."""
    written = getattr(exc, "output_path", None)
    if written:
        return f"Interrupted after the output was written; it is complete in {written}. The session can run again."
    return "Interrupted; the run stopped and no output was written. The session can run again."
