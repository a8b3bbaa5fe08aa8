"""Live progress of a run: the engine's events folded into a state, shown at a bounded rate.

A grid search on a small model emits hundreds of events a second. Each widget change is a comm
message to the browser, so the state takes every event but the widgets are redrawn at most
:data:`MAX_UPDATES_PER_S` times a second, plus at the events a person must not miss (a phase
starting or ending, a layer finishing, the end of the run).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Callable

import ipywidgets as w

from ..engine.progress import (
    Event,
    GridPoint,
    LayerFinished,
    LayerStarted,
    MappingStarted,
    PhaseFinished,
    PhaseStarted,
    RunFinished,
)
from .common import COLORS

MAX_UPDATES_PER_S = 10
PHASE_LABELS = {"calibration_data": "tokenizing calibration data", "load_model": "loading the model",
                "awq": "AWQ", "save": "saving", "done": "done"}
_ALWAYS_SHOWN = (PhaseStarted, PhaseFinished, LayerFinished, RunFinished)


class Throttle:
    """``ready()`` is true at most once per ``interval`` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self.clock()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def mark(self) -> None:
        """Count a redraw made for another reason, so that the next one waits its turn."""
        self._last = self.clock()


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class ProgressState:
    """Where a run is, from its events alone."""

    num_layers: int = 1
    phase: str = ""
    layers_done: int = 0
    layer: int | None = None
    mapping: int | None = None
    num_mappings: int = 0
    point: int = 0
    num_points: int = 0
    best_loss: float | None = None
    position: float = 0.0  # layers done, with fractions from the grid search
    elapsed_s: float = 0.0
    eta_s: float | None = None
    finished: bool = False

    def apply(self, event: Event) -> None:
        self.elapsed_s = event.elapsed_s
        if isinstance(event, PhaseStarted):
            self.phase = event.phase
        elif isinstance(event, LayerStarted):
            self.num_layers = max(event.num_layers, 1)
            self.layer, self.mapping, self.point, self.num_points = event.layer, None, 0, 0
            self.num_mappings = event.num_mappings
            self.eta_s = event.eta_s if event.eta_s is not None else self.eta_s
        elif isinstance(event, MappingStarted):
            self.mapping, self.num_mappings, self.point = event.mapping, event.num_mappings, 0
        elif isinstance(event, GridPoint):
            self.layer, self.mapping, self.num_mappings = event.layer, event.mapping, event.num_mappings
            self.point, self.num_points = event.point + 1, event.num_points
            self.best_loss = event.best_loss
            within = (event.mapping + (event.point + 1) / event.num_points) / max(event.num_mappings, 1)
            self.position = max(self.position, min(self.layers_done + within, self.num_layers))
            self.eta_s = event.eta_s
        elif isinstance(event, LayerFinished):
            self.layers_done = event.layer + 1
            self.position = max(self.position, float(self.layers_done))
            self.eta_s = event.eta_s
        elif isinstance(event, PhaseFinished) and event.phase == "awq":
            self.layers_done, self.position, self.eta_s = self.num_layers, float(self.num_layers), 0.0
        elif isinstance(event, RunFinished):
            self.phase, self.finished, self.eta_s = "done", True, 0.0


class ProgressView:
    """Two bars (layers, and the grid search of the current mapping) and a line of text."""

    def __init__(self):
        bar = w.Layout(width="420px")
        self.layers = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="layers", layout=bar)
        self.layers_text = w.HTML("")
        self.grid = w.IntProgress(value=0, min=0, max=1, description="grid search", layout=bar)
        self.grid_text = w.HTML("")
        self.status = w.HTML("")
        self.widget = w.VBox([w.HBox([self.layers, self.layers_text]), w.HBox([self.grid, self.grid_text]), self.status])
        self.redraws = 0

    def reset(self, num_layers: int) -> None:
        self.layers.max = float(max(num_layers, 1))
        self.layers.value = 0.0
        self.layers.bar_style = ""
        self.grid.max, self.grid.value = 1, 0
        self.grid.bar_style = ""
        self.layers_text.value = self.grid_text.value = ""
        self.status.value = _small("starting...")

    def render(self, s: ProgressState) -> None:
        self.redraws += 1
        self.layers.max = float(s.num_layers)
        self.layers.value = min(s.position, float(s.num_layers))
        self.layers_text.value = _small(f"{s.position:.2f} / {s.num_layers}"
                                        + ("" if s.layer is None or s.finished else f", layer {s.layer + 1}"))
        if s.num_points:
            self.grid.max = s.num_points
            self.grid.value = min(s.point, s.num_points)
            where = "" if s.mapping is None else f"mapping {s.mapping + 1}/{s.num_mappings}, "
            loss = "" if s.best_loss is None else f", best loss {s.best_loss:.3e}"
            self.grid_text.value = _small(f"{where}point {s.point}/{s.num_points}{loss}")
        phase = PHASE_LABELS.get(s.phase, s.phase or "starting")
        eta = "" if s.finished or s.eta_s is None else f", ETA {clock_text(s.eta_s)}"
        self.status.value = _small(f"{phase}: elapsed {clock_text(s.elapsed_s)}{eta}")

    def finish(self, state: str, s: ProgressState) -> None:
        """The end of a run: full bars when done, coloured bars and the state otherwise."""
        if state == "done":
            self.layers.value = self.layers.max
            self.grid.value = self.grid.max
        style = {"done": "success", "cancelled": "warning", "failed": "danger"}.get(state, "")
        self.layers.bar_style = self.grid.bar_style = style
        self.status.value = _small(f"{state}: elapsed {clock_text(s.elapsed_s)}")


class ProgressListener:
    """A run listener: every event updates the state; the view is redrawn at a bounded rate.

    ``between_points`` is called (at the same bounded rate) from inside the run; a foreground
    run uses it to let the kernel deliver widget messages such as a Cancel click.
    """

    def __init__(self, view: ProgressView, num_layers: int, *, between_points: Callable[[], None] | None = None,
                 interval: float = 1.0 / MAX_UPDATES_PER_S, clock: Callable[[], float] = time.monotonic):
        self.view = view
        self.state = ProgressState(num_layers=max(num_layers, 1))
        self.throttle = Throttle(interval, clock)
        self.poll_throttle = Throttle(interval, clock)
        self.between_points = between_points
        self.events = 0

    def __call__(self, event: Event) -> None:
        self.events += 1
        self.state.apply(event)
        if isinstance(event, _ALWAYS_SHOWN):
            self.view.render(self.state)
            self.throttle.mark()
        elif self.throttle.ready():
            self.view.render(self.state)
        if self.between_points is not None and self.poll_throttle.ready():
            self.between_points()


def _small(text: str) -> str:
    return f"<span style='font-family:system-ui,sans-serif;font-size:12px;color:{COLORS['muted']}'>{html.escape(text)}</span>"
