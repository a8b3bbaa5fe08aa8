"""llm-compressor's AWQ, observed: progress events and per-mapping statistics captured in the run.

:class:`AWQModifier` subclasses llm-compressor 0.14's ``transform.awq.AWQModifier`` and changes
none of its arithmetic. It wraps three methods:

* ``_apply_smoothing`` runs once per calibrated subgraph (one decoder layer): layer events;
* ``_compute_best_scale`` runs once per resolved mapping: mapping events, and the record of the
  mapping (activation means in, chosen scales out);
* ``_compute_loss`` runs once per grid point, in the order of ``_get_grid_search_params()``,
  whose first point is identity scaling (so its loss is the round-to-nearest loss).

The class keeps the name ``AWQModifier`` on purpose: llm-compressor writes the class name into
the saved ``recipe.yaml``, and under this name the recipe loads in plain llm-compressor. The
capture state lives in private attributes, which are not serialized.
"""

from __future__ import annotations

import re
import time
from typing import Any

from llmcompressor.modifiers.transform.awq import AWQModifier as _StockAWQModifier
from pydantic import PrivateAttr

from .progress import Emitter, GridPoint, LayerFinished, LayerStarted, MappingFinished, MappingStarted, eta
from .stats import MappingRecord, summarize

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_index(name: str) -> int:
    """The decoder layer a module belongs to (the first number in its dotted name), or -1."""
    match = _LAYER_INDEX.search(f".{name}.")
    return int(match.group(1)) if match else -1


class AWQModifier(_StockAWQModifier):
    """Stock AWQ, plus events to an :class:`Emitter` and one :class:`MappingRecord` per mapping."""

    _qw_emitter: Any = PrivateAttr(default=None)
    _qw_num_layers: int = PrivateAttr(default=0)
    _qw_records: list = PrivateAttr(default_factory=list)
    _qw_losses: list = PrivateAttr(default_factory=list)
    _qw_layer: int = PrivateAttr(default=-1)
    _qw_layers_done: int = PrivateAttr(default=0)
    _qw_mapping: int = PrivateAttr(default=0)
    _qw_num_mappings: int = PrivateAttr(default=0)
    _qw_best: float = PrivateAttr(default=float("inf"))
    _qw_awq_started: float = PrivateAttr(default=0.0)

    def observe(self, emitter: Emitter | None, num_layers: int) -> "AWQModifier":
        self._qw_emitter = emitter or Emitter()
        self._qw_num_layers = num_layers
        self._qw_awq_started = time.perf_counter()
        return self

    @property
    def records(self) -> list[MappingRecord]:
        return list(self._qw_records)

    # -- helpers -------------------------------------------------------------------------------

    def _emitter(self) -> Emitter:
        if self._qw_emitter is None:
            self._qw_emitter = Emitter()
        return self._qw_emitter

    def _layers_eta(self, fraction_of_current: float) -> float | None:
        total = max(self._qw_num_layers, self._qw_layers_done + 1)
        done = self._qw_layers_done + fraction_of_current
        return eta(time.perf_counter() - self._qw_awq_started, done, total)

    # -- wrapped lifecycle pieces ----------------------------------------------------------------

    def _apply_smoothing(self, model) -> None:
        pending = [m for m in self._resolved_mappings if m.smooth_name in self._smooth_activation_stats]
        if not pending:
            return super()._apply_smoothing(model)
        emitter = self._emitter()
        indices = {layer_index(m.smooth_name) for m in pending}
        self._qw_layer = min(indices) if indices else self._qw_layers_done
        self._qw_mapping = 0
        self._qw_num_mappings = len(pending)
        num_layers = max(self._qw_num_layers, self._qw_layers_done + 1)
        emitter.emit(LayerStarted, layer=self._qw_layer, num_layers=num_layers, num_mappings=len(pending),
                     eta_s=self._layers_eta(0.0))
        super()._apply_smoothing(model)
        self._qw_layers_done += 1
        emitter.emit(LayerFinished, layer=self._qw_layer, num_layers=num_layers, eta_s=self._layers_eta(0.0))

    def _compute_best_scale(self, mapping, fp16_outputs, orig_layer_weights):
        emitter = self._emitter()
        x_sum, count = self._smooth_activation_stats[mapping.smooth_name]
        act_mean = (x_sum / count).float().cpu()
        self._qw_losses = []
        self._qw_best = float("inf")
        emitter.emit(
            MappingStarted,
            layer=self._qw_layer,
            num_layers=max(self._qw_num_layers, self._qw_layers_done + 1),
            mapping=self._qw_mapping,
            num_mappings=self._qw_num_mappings,
            smooth_layer=mapping.smooth_name,
            balance_layers=tuple(mapping.balance_names),
        )
        scales = super()._compute_best_scale(mapping, fp16_outputs, orig_layer_weights)
        grid = self._get_grid_search_params()
        losses = list(self._qw_losses)
        best = min(range(len(losses)), key=lambda i: (losses[i], i))  # first minimum, as the search keeps it
        record = MappingRecord(
            index=len(self._qw_records),
            layer=layer_index(mapping.smooth_name),
            smooth_layer=mapping.smooth_name,
            balance_layers=tuple(mapping.balance_names),
            parent=mapping.parent_name,
            best_ratio=float(grid[best][0]),
            duo_scaling=bool(grid[best][1]),
            rtn_loss=float(losses[0]),
            best_loss=float(losses[best]),
            grid_ratios=tuple(float(r) for r, _ in grid[: len(losses)]),
            grid_duo=tuple(bool(d) for _, d in grid[: len(losses)]),
            grid_losses=tuple(float(v) for v in losses),
            scale_summary=summarize(scales),
            activation_summary=summarize(act_mean),
            scales=scales.float().cpu().numpy(),
            activation_means=act_mean.numpy(),
        )
        self._qw_records.append(record)
        emitter.emit(
            MappingFinished,
            layer=self._qw_layer,
            mapping=self._qw_mapping,
            num_mappings=self._qw_num_mappings,
            smooth_layer=mapping.smooth_name,
            best_ratio=record.best_ratio,
            best_loss=record.best_loss,
            rtn_loss=record.rtn_loss,
        )
        self._qw_mapping += 1
        return scales

    def _compute_loss(self, fp16_outputs, int_w_outputs) -> float:
        loss = super()._compute_loss(fp16_outputs, int_w_outputs)
        self._qw_losses.append(loss)
        self._qw_best = min(self._qw_best, loss)
        grid = self._get_grid_search_params()
        num_points = len(grid)
        point = len(self._qw_losses) - 1
        per_layer = max(self._qw_num_mappings, 1)
        fraction = (self._qw_mapping + (point + 1) / num_points) / per_layer
        self._emitter().emit(
            GridPoint,
            layer=self._qw_layer,
            num_layers=max(self._qw_num_layers, self._qw_layers_done + 1),
            mapping=self._qw_mapping,
            num_mappings=self._qw_num_mappings,
            point=point,
            num_points=num_points,
            ratio=float(grid[point][0]),
            loss=float(loss),
            best_loss=float(self._qw_best),
            eta_s=self._layers_eta(fraction),
        )
        return loss
