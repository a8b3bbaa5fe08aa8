"""Letting widget messages through while a foreground run holds the kernel's main thread.

A kernel handles one shell message at a time. While a foreground run is going (Colab's mode,
see :mod:`qwodel_nb.environment`), a Cancel click waits in the kernel's queue until the run
ends, which is too late. :class:`KernelPoller` asks the kernel to handle queued messages
between grid points, the way the ``jupyter-ui-poll`` package does (the idea, reimplemented
here rather than added as a dependency for the one call the panel needs):

* ``kernel.do_one_iteration()`` takes one message off the shell queue and dispatches it. Under
  ipykernel 5 and 6 it is a coroutine that must run to the end on an event loop, while the
  kernel's own loop is blocked by the very run that asks; it runs on a private loop in a
  helper thread, and the run waits for it. (Running it there also keeps ipykernel's
  SIGINT bookkeeping, which works only in the main thread, from replacing the run's handler.)
* A cell that the user starts meanwhile arrives as an ``execute_request``; it must not run in
  the middle of the quantization. Those are held back and handed to the kernel in order once
  the run has returned.
* Handling a message moves the kernel's "parent" (where output goes) to that message; it is
  put back after each one, so the run's output stays where it belongs. What the run has written
  is flushed first: ipykernel sends buffered output from its IO thread with the parent of the
  moment, and that thread mostly gets to run while the run waits for a poll, so a warning
  written just before was sent as the output of a cell the poll was holding back.

ipykernel 7 has no ``do_one_iteration``, and outside a kernel (scripts, tests) there is none
at all: the poller is then inactive, ``poll()`` does nothing, and :attr:`reason` says why. A
foreground run still stops on a kernel interrupt (the notebook's Stop button), which the
session treats as a cancel.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from typing import Any

from ..environment import ipython_kernel

POLL_TIMEOUT_S = 5.0  # one widget message is handled in milliseconds; more means the kernel is stuck


class KernelPoller:
    """``with KernelPoller() as poller: ... poller.poll()`` between units of work."""

    def __init__(self, kernel: Any = None):
        self.kernel = kernel if kernel is not None else ipython_kernel()
        self.reason = ""
        if self.kernel is None:
            self.reason = "no Jupyter kernel"
        elif not hasattr(self.kernel, "do_one_iteration") or not isinstance(getattr(self.kernel, "shell_handlers", None), dict):
            self.reason = "this kernel cannot hand over queued messages (ipykernel 7 or another kernel)"
        self.active = not self.reason
        self.handled = 0
        self.held: list[tuple] = []
        self._original_execute: Any = None
        self._parent: tuple[Any, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- entering and leaving ----------------------------------------------------------------------

    def __enter__(self) -> "KernelPoller":
        if not self.active:
            return self
        try:
            kernel = self.kernel
            self._parent = _current_parent(kernel)
            self._original_execute = kernel.shell_handlers.get("execute_request")
            kernel.shell_handlers["execute_request"] = (
                self._hold_async if inspect.iscoroutinefunction(self._original_execute) else self._hold
            )
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._serve, name="qwodel-ui-poll", daemon=True)
            self._thread.start()
        except Exception as exc:  # noqa: BLE001 - an unfamiliar kernel: run without polling
            self._disable(f"the kernel refused ({type(exc).__name__}: {exc})")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop_loop()
        kernel = self.kernel
        if self._original_execute is not None:
            kernel.shell_handlers["execute_request"] = self._original_execute
            self._original_execute = None
        if self._parent is not None:
            _set_parent(kernel, self._parent)
        if self.held:
            held, self.held = self.held, []
            self._schedule_replay(held)

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.run_forever()
        pending = asyncio.all_tasks(loop)  # an iteration abandoned after a time-out: end it quietly
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def _stop_loop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(POLL_TIMEOUT_S)
        self._loop, self._thread = None, None

    def _disable(self, reason: str) -> None:
        self.active = False
        self.reason = reason
        self._stop_loop()

    # -- polling -------------------------------------------------------------------------------------

    def poll(self, max_messages: int = 10) -> int:
        """Handle up to ``max_messages`` queued messages; returns how many iterations ran."""
        if not self.active or self._loop is None:
            return 0
        kernel = self.kernel
        saved_sigint = getattr(kernel, "saved_sigint_handler", None)
        done = 0
        _flush_output()  # under the run's parent, before a message moves it
        try:
            for _ in range(max_messages):
                future = asyncio.run_coroutine_threadsafe(self._one_iteration(), self._loop)
                future.result(POLL_TIMEOUT_S)
                done += 1
                if _queue_size(kernel) == 0:
                    break  # each iteration first moves what arrived into the queue: it is all handled
        except Exception as exc:  # noqa: BLE001 - a timeout or a kernel bug: keep the run going
            self._disable(f"the kernel stopped handing over messages ({type(exc).__name__})")
        finally:
            if saved_sigint is not None:
                kernel.saved_sigint_handler = saved_sigint
            if self._parent is not None:
                _set_parent(kernel, self._parent)
        self.handled += done
        return done

    async def _one_iteration(self) -> None:
        result = self.kernel.do_one_iteration()
        if inspect.isawaitable(result):
            await result

    # -- cells started during the run -----------------------------------------------------------

    def _hold(self, stream: Any, ident: Any, parent: Any) -> None:
        self.held.append((stream, ident, parent))

    async def _hold_async(self, stream: Any, ident: Any, parent: Any) -> None:
        self._hold(stream, ident, parent)

    def _schedule_replay(self, held: list[tuple]) -> None:
        """Hand the held cells to the kernel after the current message (the run) has returned."""
        kernel = self.kernel

        async def replay() -> None:
            for stream, ident, parent in held:
                _set_parent(kernel, (ident, parent))
                if getattr(kernel, "_aborting", False) and hasattr(kernel, "_send_abort_reply"):
                    kernel._send_abort_reply(stream, parent, ident)
                    continue
                result = kernel.execute_request(stream, ident, parent)
                if inspect.isawaitable(result):
                    await result
                sys.stdout.flush()
                sys.stderr.flush()
            try:
                kernel._publish_status("idle", "shell")
            except TypeError:  # ipykernel 5: no channel argument
                kernel._publish_status("idle")
            except Exception:  # noqa: BLE001 - only the busy indicator is at stake
                pass

        io_loop = getattr(kernel, "io_loop", None)
        if io_loop is not None:
            io_loop.add_callback(replay)
        else:  # pragma: no cover - every ipykernel has an io_loop
            asyncio.ensure_future(replay())


def _current_parent(kernel: Any) -> tuple[Any, Any]:
    ident = getattr(kernel, "_parent_ident", None)
    if isinstance(ident, dict):  # ipykernel 6 keeps one per channel
        ident = ident.get("shell")
    parent = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else getattr(kernel, "_parent_header", None)
    return ident, parent


def _set_parent(kernel: Any, parent: tuple[Any, Any]) -> None:
    try:
        kernel.set_parent(*parent)
    except Exception:  # noqa: BLE001 - output may then land in another cell, nothing worse
        pass


def _queue_size(kernel: Any) -> int:
    queue = getattr(kernel, "msg_queue", None)
    try:
        return queue.qsize() if queue is not None else 0
    except Exception:  # noqa: BLE001
        return 0


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or odd stream: nothing buffered to lose
            pass
