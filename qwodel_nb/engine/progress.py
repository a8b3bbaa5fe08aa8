"""Progress of a run as a stream of typed events.

The engine emits events to listeners (plain callables taking one event); the console, the magic
and the panel each render them their own way. Events are small frozen dataclasses; every event
carries ``elapsed_s`` since the run started, and the fine-grained ones an ETA where one can be
estimated from the work done so far.

Order within a run: ``PhaseStarted("calibration_data")``, ``PhaseStarted("load_model")``... then
``PhaseStarted("awq")``, for each decoder layer ``LayerStarted`` -> for each of its mappings
``MappingStarted`` -> ``GridPoint`` x G -> ``MappingFinished`` -> ``LayerFinished``, then
``PhaseFinished("awq")``, ``PhaseStarted("save")``..., and finally ``RunFinished``. When the GPU
runs out of memory, ``OutOfMemoryRetry`` says which setting was lowered and the phases start again.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import RunCancelled

PHASES = ("calibration_data", "load_model", "awq", "save")


@dataclass(frozen=True)
class Event:
    elapsed_s: float


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: str


@dataclass(frozen=True)
class PhaseFinished(Event):
    phase: str
    duration_s: float


@dataclass(frozen=True)
class LayerStarted(Event):
    layer: int  # 0-based
    num_layers: int
    num_mappings: int
    eta_s: float | None = None


@dataclass(frozen=True)
class LayerFinished(Event):
    layer: int
    num_layers: int
    eta_s: float | None = None


@dataclass(frozen=True)
class MappingStarted(Event):
    layer: int
    num_layers: int
    mapping: int  # 0-based within the layer
    num_mappings: int
    smooth_layer: str
    balance_layers: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class GridPoint(Event):
    layer: int
    num_layers: int
    mapping: int
    num_mappings: int
    point: int  # 0-based
    num_points: int
    ratio: float
    loss: float
    best_loss: float
    eta_s: float | None = None


@dataclass(frozen=True)
class MappingFinished(Event):
    layer: int
    mapping: int
    num_mappings: int
    smooth_layer: str
    best_ratio: float
    best_loss: float
    rtn_loss: float


@dataclass(frozen=True)
class OutOfMemoryRetry(Event):
    """The GPU ran out of memory; the run starts again with one setting lowered (see backoff.py)."""

    attempt: int  # the attempt that failed, 1-based
    phase: str
    setting: str  # batch_size, placement, seq_len or num_samples
    old: Any
    new: Any
    message: str


@dataclass(frozen=True)
class RunFinished(Event):
    output_path: str


Listener = Callable[[Event], None]


class Emitter:
    """Sends events to listeners, stamping elapsed time; a failing listener never stops the run.

    ``cancel`` (a ``threading.Event`` or anything with ``is_set()``) is checked at every event:
    once set, the next event raises :class:`RunCancelled` inside the run, at the latest one grid
    point after the request.
    """

    def __init__(self, listeners: Iterable[Listener] = (), cancel: Any = None):
        self.listeners = list(listeners)
        self.cancel = cancel
        self.started = time.perf_counter()
        self.errors: list[BaseException] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def emit(self, cls: type[Event], **fields) -> Event:
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled("The run was cancelled; nothing was written.")
        event = cls(elapsed_s=self.elapsed(), **fields)
        self._send(event)
        return event

    def emit_each(self, cls: type[Event], common: dict[str, Any], rows: Iterable[dict[str, Any]]) -> None:
        """One event of ``cls`` per row, with the ``common`` fields and the row's, as :meth:`emit`
        would send them one by one (cancel checked before each). For bursts (a mapping's grid
        points, known at once on a GPU): where every field is given, the event is made without the
        frozen dataclass's ``__init__``, which sets each field through ``object.__setattr__`` and
        was a large part of an event's cost."""
        cancel, started, new = self.cancel, self.started, object.__new__
        names = _field_names(cls)
        for row in rows:
            if cancel is not None and cancel.is_set():
                raise RunCancelled("The run was cancelled; nothing was written.")
            values = {**common, **row, "elapsed_s": time.perf_counter() - started}
            if values.keys() == names:
                event = new(cls)
                event.__dict__.update(values)
            else:  # defaults to fill, or a missing or unknown field to refuse: the dataclass does it
                event = cls(**values)
            self._send(event)

    def _send(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:  # a renderer bug must not cost the user an hour of AWQ
                self.errors.append(exc)


@functools.lru_cache(maxsize=None)
def _field_names(cls: type[Event]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def eta(elapsed_s: float, done: float, total: float) -> float | None:
    """Seconds left if the remaining work goes at the average pace so far."""
    if done <= 0 or total <= done:
        return 0.0 if total and done >= total else None
    return elapsed_s * (total - done) / done


def report_retries(event: Event) -> None:
    """A listener for callers without a progress display: each back-off step as a line on standard error."""
    if isinstance(event, OutOfMemoryRetry):
        import sys

        print(f"qwodel: {event.message}", file=sys.stderr, flush=True)
