"""Where llm-compressor's log lines go.

llm-compressor logs through loguru to standard output at INFO level, and on a machine without
an accelerator repeats "No accelerator available!" many times per run. Command-line output should
keep standard output for results, so :func:`route_library_logs` sends its records to standard
error at the chosen level and drops that one repeated line (the plan already says the run is on
the CPU). :func:`debug_logging` (the CLI's ``--debug``) shows every library's records at DEBUG.
Both mask tokens in what they print.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from .secrets import Secret, redact

_NOISE = ("No accelerator available",)


_handler: list[int] = []  # the id of the handler added below, so that a second call replaces it


def route_library_logs(level: str = "WARNING") -> None:
    """Send llm-compressor's log records to standard error at ``level``; safe to call repeatedly."""
    from llmcompressor.logger import LoggerConfig, configure_logger
    from loguru import logger

    configure_logger(LoggerConfig(console_log_level=None))  # removes every handler, its stdout one too
    _handler.clear()

    def _keep(record) -> bool:
        return not any(text in record["message"] for text in _NOISE)

    def _sink(message) -> None:  # the current standard error, token-shaped text masked
        sys.stderr.write(redact(str(message)))

    _handler.append(logger.add(_sink, level=level.upper(), format="llm-compressor {level}: {message}", filter=_keep))


class RedactingFormatter(logging.Formatter):
    """A log formatter that masks the given secrets and anything shaped like a Hugging Face token."""

    def __init__(self, fmt: str, secrets: tuple[Secret | None, ...] = ()):
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), *self.secrets)


def debug_logging(*secrets: Secret | None) -> None:
    """Every library's log records at DEBUG on standard error, through one redacting handler (``--debug``)."""
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(name)s %(levelname)s: %(message)s", secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    hf_logging.set_verbosity_debug()
    hf_logging.disable_default_handler()  # transformers' own handler would print unredacted
    hf_logging.enable_propagation()
    route_library_logs("DEBUG")


@contextlib.contextmanager
def library_bars_silenced() -> Iterator[None]:
    """Hide llm-compressor's and compressed-tensors' own tqdm bars while our progress shows.

    Both libraries call ``tqdm`` imported into each module; for the duration of the block every
    such name in their loaded modules is swapped for a tqdm that is disabled, then restored.
    """
    import importlib

    from tqdm import tqdm as _tqdm
    from transformers.utils import logging as hf_logging

    for name in ("llmcompressor.entrypoints.oneshot", "llmcompressor.pipelines.sequential.pipeline",
                 "llmcompressor.modifiers.transform.awq.base"):
        importlib.import_module(name)  # load them now, so that their bars are found below

    def quiet(*args, **kwargs):  # forced, since some callers pass disable= themselves
        kwargs["disable"] = True
        return _tqdm(*args, **kwargs)

    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    swapped = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("llmcompressor", "compressed_tensors")):
            continue
        if getattr(module, "tqdm", None) is _tqdm:
            swapped.append(module)
            module.tqdm = quiet
    try:
        yield
    finally:
        for module in swapped:
            module.tqdm = _tqdm
        if hf_bars:
            hf_logging.enable_progress_bar()
