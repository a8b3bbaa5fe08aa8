"""The default progress renderer: one tqdm.auto bar driven by the engine's events.

tqdm.auto shows a widget in notebooks and a text bar in terminals. The bar counts decoder layers,
advancing by fractions of a layer as grid points finish, so that it moves smoothly on big
layers; its postfix names the layer, mapping and grid point with the best loss so far.
"""

from __future__ import annotations

import sys

from .engine.progress import Event, GridPoint, LayerFinished, LayerStarted, OutOfMemoryRetry, PhaseFinished, PhaseStarted

_PHASE_LABELS = {"calibration_data": "tokenizing", "load_model": "loading model", "awq": "AWQ", "save": "saving"}


class ProgressBar:
    """A listener: ``execute(plan, listeners=[ProgressBar(num_layers)])``."""

    def __init__(self, num_layers: int):
        from tqdm.auto import tqdm

        self.num_layers = max(int(num_layers), 1)
        self.bar = tqdm(total=self.num_layers, desc="qwodel:", unit="layer", dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.2f}/{total} layers [{elapsed}<{remaining}{postfix}]")
        self.layers_done = 0

    def _set(self, position: float) -> None:
        position = min(position, self.num_layers)
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseStarted):
            self.bar.set_description(f"qwodel {_PHASE_LABELS.get(event.phase, event.phase)}", refresh=False)
        elif isinstance(event, LayerStarted):
            self.bar.set_postfix_str(f"layer {event.layer + 1}/{event.num_layers}", refresh=False)
        elif isinstance(event, GridPoint):
            within = (event.mapping + (event.point + 1) / event.num_points) / max(event.num_mappings, 1)
            self._set(self.layers_done + within)
            self.bar.set_postfix_str(
                f"layer {event.layer + 1}/{event.num_layers}, mapping {event.mapping + 1}/{event.num_mappings}, "
                f"grid {event.point + 1}/{event.num_points}, best loss {event.best_loss:.3e}",
                refresh=False,
            )
        elif isinstance(event, LayerFinished):
            self.layers_done += 1
            self._set(self.layers_done)
        elif isinstance(event, PhaseFinished) and event.phase == "awq":
            self._set(self.num_layers)
        elif isinstance(event, OutOfMemoryRetry):  # the run starts again from the first layer
            self.bar.write(f"qwodel: {event.message}", file=sys.stderr)
            self.layers_done = 0
            self.bar.reset(total=self.num_layers)
            self.bar.set_postfix_str(f"out of GPU memory: {event.setting} {event.old} -> {event.new}", refresh=False)

    def close(self, ok: bool = True) -> None:
        if ok:
            self._set(self.num_layers)
            self.bar.set_description("qwodel done")
        self.bar.close()
