"""Holding Ctrl-C and SIGTERM back for the few instructions that must not be cut in two.

Moving the finished output into place is one rename (or an exchange and a removal); an
interrupt that lands in the middle of it would leave the caller unable to say whether the
output was written. :func:`interrupts_held` keeps such a signal aside while its block runs and
delivers it, unchanged, right after, when the state on disk is known.

Python runs signal handlers in the main thread only; elsewhere (a notebook panel's run thread)
no interrupt can land, and the block runs as it is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held; one that arrived is raised again after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum, frame):
        arrived.append(signum)

    previous = {}
    try:
        for signum in _HELD:
            if signal.getsignal(signum) is not None:  # None: a handler set outside Python, left alone
                previous[signum] = signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:  # the first one, as the process would have had it without the hold
            signal.raise_signal(arrived[0])
