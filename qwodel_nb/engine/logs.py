"""Where llm-compressor's log lines go.

llm-compressor logs through loguru to standard output at INFO level, and on a machine without
an accelerator repeats "No accelerator available!" many times per run. Command-line output should
keep standard output for results, so :func:`route_library_logs` sends its records to standard
error at the chosen level and drops that one repeated line (the plan already says the run is on
the CPU).
"""

from __future__ import annotations

import sys

_NOISE = ("No accelerator available",)


def route_library_logs(level: str = "WARNING") -> None:
    from llmcompressor.logger import LoggerConfig, configure_logger
    from loguru import logger

    configure_logger(LoggerConfig(console_log_level=None))  # removes its stdout handler

    def _keep(record) -> bool:
        return not any(text in record["message"] for text in _NOISE)

    logger.add(sys.stderr, level=level.upper(), format="llm-compressor {level}: {message}", filter=_keep)
