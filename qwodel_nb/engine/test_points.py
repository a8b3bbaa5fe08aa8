"""Named points of a run where a test can kill the process or pause it; inert unless asked.

``QWODEL_TEST_KILL_AT=<point>`` makes the process kill itself (SIGKILL) when it reaches the
point, and ``QWODEL_TEST_PAUSE_AT=<point>`` makes it announce the point on standard error and
sleep there (so that a test can send a signal to a run known to be at that place). They exist
only for the tests of the atomic output and of interrupts; a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time

#: the save's points, in order (``engine/output.py``, ``engine/run.py``)
SAVE_POINTS = ("staged", "weights", "tokenizer", "summary", "aside", "swapped", "published")
#: the AWQ search's point: the start of each decoder layer's search, "layer-<index>"
LAYER_POINT = "layer-{index}"
KILL_ENV = "QWODEL_TEST_KILL_AT"
PAUSE_ENV = "QWODEL_TEST_PAUSE_AT"


def test_point(name: str) -> None:
    """A named point of the run; does nothing unless a test asked for a kill or a pause here."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) == name:
        print(f"qwodel-test: paused at {name}", file=sys.stderr, flush=True)
        time.sleep(600)


test_point.__test__ = False  # not a pytest test, despite its name
