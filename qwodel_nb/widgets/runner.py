"""Running the session's AWQ from the panel, in a background thread or in the foreground.

Why two modes, and which one ``auto`` picks, is explained in :mod:`qwodel_nb.environment`.
Either way the run is ``Session.run`` itself, so a panel run and a Python run behave alike:
the same plan, the same cancel at the next grid point, the same output staging (a cancelled
or failed run leaves no output folder), and the session can run again afterwards.

Every way a run can end becomes an :class:`Outcome` with a one-line message; nothing escapes
as a traceback. A thread's exception would be printed into whichever cell is current, and a
foreground run is inside a widget click handler, whose exceptions the kernel writes to its log.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ..engine.errors import CancelledError, InterruptedAfterOutput, QwodelError, interrupted_message
from ..environment import resolve_run_mode
from .common import one_line
from .ui_poll import KernelPoller

INTERRUPTED = interrupted_message(KeyboardInterrupt())


@dataclass
class Outcome:
    state: str  # "done", "cancelled" or "failed"
    message: str = ""
    result: Any = None
    traceback: str = ""  # kept for a bug report when the error was not the user's; never displayed


class RunController:
    """Starts one run at a time in the chosen mode and reports how it ended."""

    def __init__(self, mode: str = "auto", poller_factory: Callable[[], Any] = KernelPoller):
        self.requested_mode = mode
        self.mode = resolve_run_mode(mode)
        self.poller_factory = poller_factory
        self.thread: threading.Thread | None = None
        self.poller: Any = None
        self.outcome: Outcome | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def start(self, session: Any, make_listener: Callable[[Callable[[], Any] | None], Any],
              on_finish: Callable[[Outcome], None]) -> None:
        """Run ``session``; ``make_listener(between_points)`` builds its progress listener.

        In thread mode this returns at once; in foreground mode it returns when the run ends.
        ``on_finish`` is called once, with the outcome, in the thread that ran AWQ.
        """
        if self._running:
            return
        self._running = True
        self.outcome = None
        if self.mode == "thread":
            self.thread = threading.Thread(target=self._execute, args=(session, make_listener(None), on_finish),
                                           name="qwodel-run", daemon=True)
            self.thread.start()
            return
        with self.poller_factory() as poller:
            self.poller = poller
            self._execute(session, make_listener(poller.poll), on_finish)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a thread-mode run; True once no run is going."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self._running

    def _execute(self, session: Any, listener: Any, on_finish: Callable[[Outcome], None]) -> None:
        secrets = (getattr(session.settings, "token", None),)
        try:
            result = session.run(callbacks=[listener], progress=False)
            outcome = Outcome("done", "", result)
        except CancelledError as exc:
            outcome = Outcome("cancelled", exc.message)
        except InterruptedAfterOutput as exc:  # the kernel's interrupt, after the output was in place
            if session.result is not None:  # during the evaluation: the run itself is done
                outcome = Outcome("done", session.result.evaluation_error or "", session.result)
            else:
                outcome = Outcome("cancelled", interrupted_message(exc))
        except KeyboardInterrupt:  # the kernel's interrupt, in a foreground run: the session cancelled it
            outcome = Outcome("cancelled", INTERRUPTED)
        except QwodelError as exc:
            outcome = Outcome("failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - shown in the panel as one line, kept for a report
            outcome = Outcome("failed", one_line(exc, *secrets), traceback=traceback.format_exc())
        self.outcome = outcome
        self._running = False
        on_finish(outcome)
