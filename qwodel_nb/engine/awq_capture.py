"""llm-compressor's AWQ, observed and searched faster: progress events and per-mapping statistics.

:class:`AWQModifier` subclasses llm-compressor 0.14's ``transform.awq.AWQModifier``. It wraps
three methods:

* ``_apply_smoothing`` runs once per calibrated subgraph (one decoder layer): layer events;
* ``_compute_best_scale`` runs once per resolved mapping: mapping events, and the record of the
  mapping (activation means in, chosen scales out). With ``search="fast"`` (the default) the grid
  search itself is :func:`qwodel_nb.engine.awq_search.search_best_scales`, which makes the same
  choices with far less overhead; ``search="stock"`` keeps llm-compressor's own loop, and the
  fast path also hands a mapping to it when it cannot reproduce it;
* ``_compute_loss`` runs once per grid point of the stock loop, in the order of
  ``_get_grid_search_params()``, whose first point is identity scaling (so its loss is the
  round-to-nearest loss).

Smoothing, mappings, caching, the pipeline and the saved format stay llm-compressor's.

The class keeps the name ``AWQModifier`` on purpose: llm-compressor writes the class name into
the saved ``recipe.yaml``, and under this name the recipe loads in plain llm-compressor. The
capture state lives in private attributes, which are not serialized.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from llmcompressor.modifiers.transform.awq import AWQModifier as _StockAWQModifier
from pydantic import PrivateAttr

from . import awq_references, lean_attention
from .activation_sums import BatchSums
from .awq_clip import CLIP_MODES, ClipResult, GramAccumulator, search_clip
from .awq_clip import supports as clip_supports
from .awq_hooks import activation_sum_hook, parent_arguments_hook
from .awq_references import CapturedReferences
from .awq_screening import still_pays
from .awq_search import Unsupported, search_best_scales
from .awq_smoothing import apply_smoothing
from .progress import Emitter, GridPoint, LayerFinished, LayerStarted, MappingFinished, MappingStarted, eta
from .ranks import all_reduce, is_distributed, union_of_names
from .stats import MappingRecord, summarize
from .test_points import LAYER_POINT, test_point

SEARCH_METHODS = ("fast", "stock")
#: the fast search's own calibration hooks (engine/awq_hooks.py); False gives it stock's (to measure)
FAST_HOOKS = True
#: layers the clipping search leaves alone, as the original AWQ code does: their outputs meet in
#: the attention scores, where a per-group output error says little
CLIP_SKIPPED = ("q_proj", "k_proj", "query", "key", "qkv_proj", "Wqkv")


@dataclass
class _Increment:
    increment: Any
    tokens_added: int
    used_by: set
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
    _qw_search: str = PrivateAttr(default="fast")
    _qw_capture: bool = PrivateAttr(default=True)
    _qw_fallbacks: list = PrivateAttr(default_factory=list)
    _qw_methods: dict = PrivateAttr(default_factory=dict)
    _qw_clip: str = PrivateAttr(default="none")
    _qw_grams: dict = PrivateAttr(default_factory=dict)
    _qw_last_input: tuple = PrivateAttr(default=(None, None))
    _qw_input_scales: dict = PrivateAttr(default_factory=dict)
    _qw_clips: list = PrivateAttr(default_factory=list)
    _qw_clip_s: float = PrivateAttr(default=0.0)
    _qw_smoothing_s: float = PrivateAttr(default=0.0)
    _qw_batch_sums: Any = PrivateAttr(default=None)
    _qw_capture_s: float = PrivateAttr(default=0.0)
    _qw_fused: int = PrivateAttr(default=0)
    _qw_attended: list = PrivateAttr(default_factory=list)  # per fused-attention mapping: (points confirmed, points)
    _qw_chosen: Any = PrivateAttr(default=None)  # the fast search's (index, exact flags) for the last mapping
    _qw_screened: list = PrivateAttr(default_factory=list)  # per screened mapping: (points confirmed, points)
    _qw_screened_in: dict = PrivateAttr(default_factory=dict)  # screened mappings per dtype of the screening passes
    _qw_references: Any = PrivateAttr(default=None)  # the parents' calibration-pass outputs (awq_references)

    def observe(self, emitter: Emitter | None, num_layers: int, *, search: str = "fast", capture: bool = True,
                clip: str = "none") -> "AWQModifier":
        """Send events to ``emitter``; ``search`` is "fast" or "stock"; ``capture=False`` keeps no
        records and sends no events (only to measure what capturing costs); ``clip="search"`` runs
        the output-aware clipping search after each layer's smoothing (``"observer"`` and
        ``"none"`` are handled by the quantization scheme, not here)."""
        if search not in SEARCH_METHODS:
            raise ValueError(f"search must be one of {SEARCH_METHODS}, not {search!r}")
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {CLIP_MODES}, not {clip!r}")
        self._qw_emitter = emitter or Emitter()
        self._qw_num_layers = num_layers
        self._qw_awq_started = time.perf_counter()
        self._qw_search = search
        self._qw_capture = capture
        self._qw_clip = clip
        return self

    @property
    def clips(self) -> list[ClipResult]:
        return list(self._qw_clips)

    @property
    def records(self) -> list[MappingRecord]:
        """The mappings' records; their scale and activation summaries are computed here, after the
        run, from the kept vectors (during the run they cost about 0.4 ms per mapping of host time,
        which the GPU waits for)."""
        for record in self._qw_records:
            if record.scale_summary is None:
                record.scale_summary = summarize(record.scales)
                record.activation_summary = summarize(record.activation_means)
        return list(self._qw_records)

    @property
    def search_summary(self) -> dict:
        """How the mappings were searched: method counts, and the mappings handed to stock, with why."""
        return {
            "search": self._qw_search,
            "methods": dict(self._qw_methods),
            # mappings whose candidate weights the fused GPU kernel made (engine/fused_candidates.py)
            "fused_candidates": self._qw_fused,
            # mappings whose parent passes ran fused causal attention (engine/search_attention.py), and
            # grid points evaluated again under eager attention out of all their grid points
            "fused_attention": len(self._qw_attended),
            "fused_attention_points_confirmed": sum(c for c, _ in self._qw_attended),
            "fused_attention_points": sum(n for _, n in self._qw_attended),
            # token screening (engine/awq_screening.py): mappings screened, and grid points evaluated
            # on all tokens out of all their grid points
            "screened": len(self._qw_screened),
            "screened_points_confirmed": sum(c for c, _ in self._qw_screened),
            "screened_points": sum(n for _, n in self._qw_screened),
            # the dtype of the screening passes' matrix products: mappings per dtype (engine/screening_precision.py)
            "screened_in": dict(self._qw_screened_in),
            "stock_fallbacks": [dict(f) for f in self._qw_fallbacks],
            # eager attention's softmax in one pass: per kind of attention module, device and dtype,
            # whether it gave the model's own outputs (engine/lean_attention.py; this process's checks)
            "lean_attention": lean_attention.verdicts(),
            # mappings whose reference outputs were the calibration pass's (engine/awq_references.py)
            "references_kept": self._qw_references.kept if self._qw_references is not None else 0,
            "clip": self._qw_clip,
            "clip_s": self._qw_clip_s,
            "smoothing_s": self._qw_smoothing_s,  # scale search + smoothing + clipping, all layers
            # host time spent recording statistics and sending events (an upper bound on what they add)
            "capture_s": self._qw_capture_s,
        }

    # -- clipping: inputs recorded as per-group Gram matrices, searched after smoothing -----------

    def on_calibration_start(self, state, event, **kwargs):
        result = super().on_calibration_start(state, event, **kwargs)
        if self._qw_clip == "search":
            self._register_clip_hooks(state.model)
        if is_distributed():  # activation sums in the one-GPU order (engine/activation_sums.py)
            self._qw_batch_sums = BatchSums()
            for mapping in self._resolved_mappings:
                target = getattr(mapping, "activation_hook_target", None) or mapping.balance_layers[0]
                self.register_hook(target, self._qw_batch_sums.hook(mapping.smooth_name), "forward")
        return result

    def _setup_activation_cache_hooks(self) -> None:
        """The fast search records the same arguments and sums as stock, with less host work per
        batch (``engine/awq_hooks.py``), and keeps the parents' outputs as their reference outputs
        where that gives the same values (``engine/awq_references.py``); the stock search keeps
        stock's hooks."""
        if self._qw_search != "fast" or not FAST_HOOKS:
            return super()._setup_activation_cache_hooks()
        from llmcompressor.pipelines.cache import IntermediatesCache

        record = parent_arguments_hook(lambda module, arguments: self._parent_args_cache[module].append(arguments))
        self._qw_references = CapturedReferences() if awq_references.ENABLED else None
        for mapping in self._resolved_mappings:
            if mapping.parent not in self._parent_args_cache:
                self._parent_args_cache[mapping.parent] = IntermediatesCache(None, self.offload_device)
                self.register_hook(mapping.parent, record, "forward_pre", with_kwargs=True)
                if self._qw_references is not None:
                    self.register_hook(mapping.parent, self._qw_references.hook(), "forward", with_kwargs=True)
            target = getattr(mapping, "activation_hook_target", None) or mapping.balance_layers[0]
            self.register_hook(target, activation_sum_hook(self._smooth_activation_stats, mapping.smooth_name), "forward")

    def _register_clip_hooks(self, model) -> None:
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or name.endswith(CLIP_SKIPPED):
                continue
            args = getattr(getattr(module, "quantization_scheme", None), "weights", None)
            if not clip_supports(args) or module.in_features % args.group_size:
                continue
            self.register_hook(module, self._clip_input_hook(name), "forward_pre")

    def _clip_input_hook(self, name: str):
        def hook(module, args):
            x = args[0]
            accumulator = self._qw_grams.get(name)
            if accumulator is None:
                group = module.quantization_scheme.weights.group_size
                accumulator = GramAccumulator(module.in_features, group, module.weight.device)
                self._qw_grams[name] = (module, accumulator)
            else:
                accumulator = accumulator[1]
            # gate/up (and fused siblings) receive the same tensor object one after the other:
            # its Gram increment is computed once. The cache holds the tensor itself, so its memory
            # cannot be reused by another tensor while cached (an address comparison could be
            # fooled by that), and a layer that already used the entry recomputes.
            last_tensor, last = self._qw_last_input
            if last_tensor is x and last is not None and name not in last.used_by:
                last.used_by.add(name)
            else:
                last = _Increment(accumulator.increment(x), x.numel() // x.shape[-1], {name})
                self._qw_last_input = (x, last)
            accumulator.gram += last.increment
            accumulator.tokens += last.tokens_added

        return hook

    def _clip_pending(self, model=None) -> None:
        """Clip every layer whose inputs were recorded in this subgraph, then free the records.

        In a distributed run the Gram matrices and token counts are summed over the ranks, and
        the layers are taken in one order for all ranks (a rank that saw no token for a layer,
        an unused expert say, takes part with an empty Gram matrix), so every rank makes the
        same collective calls and chooses the same clip ranges.
        """
        names = union_of_names(list(self._qw_grams))  # this rank's own names outside a distributed run
        if not names:
            return
        started = time.perf_counter()
        for name in names:
            entry = self._qw_grams.get(name)
            if entry is None:  # only in a distributed run: this rank saw no input for the layer
                module = model.get_submodule(name)
                entry = (module, GramAccumulator(module.in_features, module.quantization_scheme.weights.group_size,
                                                 module.weight.device))
            module, accumulator = entry
            gram, tokens = all_reduce([accumulator.gram, torch.tensor(accumulator.tokens, device=accumulator.gram.device)])
            result = search_clip(
                name, module, gram, int(tokens), module.quantization_scheme.weights,
                input_scales=self._qw_input_scales.pop(module, None),
            )
            self._qw_clips.append(result)
            self._qw_grams.pop(name, None)
        self._qw_last_input = (None, None)
        self._qw_clip_s += time.perf_counter() - started

    # -- helpers -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _capturing(self):
        """Count the enclosed host time as capture time (statistics and events)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._qw_capture_s += time.perf_counter() - started

    def _emitter(self) -> Emitter:
        if self._qw_emitter is None:
            self._qw_emitter = Emitter()
        return self._qw_emitter

    @property
    def _num_layers_seen(self) -> int:
        return _layers_seen(self.__pydantic_private__)

    def _layers_eta(self, fraction_of_current: float) -> float | None:
        total = self._num_layers_seen
        done = self._qw_layers_done + fraction_of_current
        return eta(time.perf_counter() - self._qw_awq_started, done, total)

    # -- wrapped lifecycle pieces ----------------------------------------------------------------

    def _apply_smoothing(self, model) -> None:
        started = time.perf_counter()
        try:
            self._smooth_and_clip(model)
        finally:
            self._qw_smoothing_s += time.perf_counter() - started

    def _smooth_and_clip(self, model) -> None:
        if self._qw_batch_sums is not None:
            self._qw_batch_sums.settle(self._smooth_activation_stats)
        pending = [m for m in self._resolved_mappings if m.smooth_name in self._smooth_activation_stats]
        if not pending or not self._qw_capture:
            self._smooth(model)
            self._clip_pending(model)
            return
        with self._capturing():
            emitter = self._emitter()
            indices = {layer_index(m.smooth_name) for m in pending}
            self._qw_layer = min(indices) if indices else self._qw_layers_done
            self._qw_mapping = 0
            self._qw_num_mappings = len(pending)
            num_layers = self._num_layers_seen
            emitter.emit(LayerStarted, layer=self._qw_layer, num_layers=num_layers, num_mappings=len(pending),
                         eta_s=self._layers_eta(0.0))
        test_point(LAYER_POINT.format(index=self._qw_layer))
        self._smooth(model)
        self._clip_pending(model)
        with self._capturing():
            self._qw_layers_done += 1
            emitter.emit(LayerFinished, layer=self._qw_layer, num_layers=num_layers, eta_s=self._layers_eta(0.0))

    def _smooth(self, model) -> None:
        """The fast search also gets the leaner smoothing loop; the stock search keeps stock's."""
        if self._qw_search == "fast":
            apply_smoothing(self, model)
        else:
            super()._apply_smoothing(model)

    def _compute_best_scale(self, mapping, fp16_outputs, orig_layer_weights):
        if not self._qw_capture:
            return self._search(mapping, fp16_outputs, orig_layer_weights)
        # The private attributes are read and written in their dict: pydantic serves each through
        # __getattr__, about a microsecond apiece, some thirty times per mapping (bench/capture_cost.py).
        private = self.__pydantic_private__
        started = time.perf_counter()
        emitter = self._emitter()
        x_sum, count = self._smooth_activation_stats[mapping.smooth_name]
        x_sum, count = all_reduce([x_sum, count])  # all ranks' tokens: the same record on every rank
        # the sums sit on the GPU (the fast search's hooks, or a distributed all-reduce) or on the CPU:
        # copying the mean back waits until the search has read its losses anyway, not before it starts;
        # the count is a CPU tensor outside a distributed run, read without a copy to the device
        act_mean = (x_sum / int(count)).float()
        private["_qw_losses"] = []
        private["_qw_best"] = float("inf")
        layer, mapping_index, num_mappings = private["_qw_layer"], private["_qw_mapping"], private["_qw_num_mappings"]
        emitter.emit(
            MappingStarted,
            layer=layer,
            num_layers=_layers_seen(private),
            mapping=mapping_index,
            num_mappings=num_mappings,
            smooth_layer=mapping.smooth_name,
            balance_layers=tuple(mapping.balance_names),
        )
        private["_qw_capture_s"] += time.perf_counter() - started
        scales = self._search(mapping, fp16_outputs, orig_layer_weights)
        started = time.perf_counter()
        try:
            act_mean = act_mean.cpu()
            grid = self._get_grid_search_params()
            losses = list(private["_qw_losses"])
            chosen, private["_qw_chosen"] = private["_qw_chosen"], None
            if chosen is not None and len(chosen[1]) == len(losses):
                best, exact = chosen  # screened: the choice is among the points evaluated in full
            else:
                best = min(range(len(losses)), key=lambda i: (losses[i], i))  # first minimum, as stock keeps it
                exact = ()
            records = private["_qw_records"]
            record = MappingRecord(
                index=len(records),
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
                grid_exact=tuple(exact) if not all(exact) else (),
                scale_summary=None,  # summarized when the records are read (records)
                activation_summary=None,
                scales=scales.float().cpu().numpy(),
                activation_means=act_mean.numpy(),
            )
            records.append(record)
            emitter.emit(
                MappingFinished,
                layer=layer,
                mapping=mapping_index,
                num_mappings=num_mappings,
                smooth_layer=mapping.smooth_name,
                best_ratio=record.best_ratio,
                best_loss=record.best_loss,
                rtn_loss=record.rtn_loss,
            )
            private["_qw_mapping"] = mapping_index + 1
        finally:
            private["_qw_capture_s"] += time.perf_counter() - started
        return scales

    def _search(self, mapping, fp16_outputs, orig_layer_weights):
        """The chosen scales; kept per balance layer when clipping needs its inputs after smoothing."""
        scales = self._search_scales(mapping, fp16_outputs, orig_layer_weights)
        if self._qw_clip == "search":
            for layer in mapping.balance_layers:
                self._qw_input_scales[layer] = scales
        return scales

    def _search_scales(self, mapping, fp16_outputs, orig_layer_weights):
        """The fast search, or the stock loop (chosen, or as the fallback for this mapping)."""
        if self._qw_search == "fast":
            try:
                result = search_best_scales(
                    self,
                    mapping,
                    fp16_outputs,
                    orig_layer_weights,
                    on_points=self._on_points if self._qw_capture else None,
                    screen=None if still_pays(self._qw_screened) else False,
                    attention=None if still_pays(self._qw_attended) else False,
                )
            except Unsupported as why:
                self._qw_fallbacks.append({"mapping": mapping.smooth_name, "reason": str(why)})
                self._qw_losses = []
                self._qw_best = float("inf")
            else:
                self._qw_methods[result.method] = self._qw_methods.get(result.method, 0) + 1
                self._qw_fused += int(result.fused)
                self._qw_chosen = (result.best_index, result.exact)
                if result.confirmed is not None:
                    history = self._qw_attended if result.fused_attention else self._qw_screened
                    history.append((len(result.confirmed), len(result.losses)))
                if result.screened_in is not None:
                    self._qw_screened_in[result.screened_in] = self._qw_screened_in.get(result.screened_in, 0) + 1
                return result.best_scales
        self._qw_methods["stock"] = self._qw_methods.get("stock", 0) + 1
        return super()._compute_best_scale(mapping, fp16_outputs, orig_layer_weights)

    def _compute_loss(self, fp16_outputs, int_w_outputs) -> float:
        loss = super()._compute_loss(fp16_outputs, int_w_outputs)
        if self._qw_capture:
            self._on_points([len(self._qw_losses)], [loss])
        return loss

    def _on_points(self, indices: list[int], losses: list[float]) -> None:
        """Grid points whose losses are known: one event each (the emitter also checks for cancel)."""
        private = self.__pydantic_private__  # as in _compute_best_scale: no __getattr__ per read
        started = time.perf_counter()
        try:
            self._send_points(private, indices, losses)
        finally:
            private["_qw_capture_s"] += time.perf_counter() - started

    def _send_points(self, private: dict, indices: list[int], losses: list[float]) -> None:
        grid = self._get_grid_search_params()
        num_points = len(grid)
        layer, mapping, num_mappings = private["_qw_layer"], private["_qw_mapping"], private["_qw_num_mappings"]
        per_layer = max(num_mappings, 1)
        layers_done, started = private["_qw_layers_done"], private["_qw_awq_started"]
        num_layers = _layers_seen(private)
        recorded, best = private["_qw_losses"], private["_qw_best"]
        common = dict(layer=layer, num_layers=num_layers, mapping=mapping, num_mappings=num_mappings, num_points=num_points)
        rows = []
        now = time.perf_counter() - started  # the points of one call are known at the same moment
        for point, loss in zip(indices, losses):
            recorded.append(loss)
            best = min(best, loss)
            fraction = (mapping + (point + 1) / num_points) / per_layer
            rows.append(dict(point=point, ratio=float(grid[point][0]), loss=float(loss), best_loss=float(best),
                             eta_s=eta(now, layers_done + fraction, num_layers)))
        try:
            self._emitter().emit_each(GridPoint, common, rows)
        finally:
            private["_qw_best"] = best


def _layers_seen(private: dict) -> int:
    """Decoder layers in the run: as planned, or more if the pipeline has shown more (read from the
    modifier's private dict, as its per-mapping capture does)."""
    return max(private["_qw_num_layers"], private["_qw_layers_done"] + 1)
