"""AWQ's smoothing loop for one calibrated subgraph, with the calibration context entered once.

llm-compressor 0.14's ``AWQModifier._apply_smoothing`` enters ``calibration_forward_context``
(which walks every module of the model to set eval mode, among other things) for each mapping;
measured on SmolLM2-135M on an H200 that walk was about a quarter of the whole smoothing step
(bench/RESULTS.md). This loop does what the stock one does, in the same order, but enters that
context and the hook switch once for all mappings of the subgraph (and skips the context's eval
walk when the modules it runs are in eval mode already, as the pipeline leaves them):

1. for each mapping with cached activations: onload its modules, run the parent on every cached
   batch to get the reference outputs, or take the ones the calibration pass made where they are
   the same (``engine/awq_references.py``), skipping the mapping, as stock does, when there are
   none or they are not finite; keep the balance layers' original weights;
2. ask ``modifier._compute_best_scale`` for the scales (the fast search, or the stock one);
3. multiply the balance layers' input columns by the scales and divide the smooth layer's output
   (its weight rows and bias) by them;
4. free the mapping's caches; at the end check that every cached activation was used.

In a distributed run the decision to skip a mapping is taken from all ranks' outputs, so that
the ranks never disagree on which mappings call the (collective) search.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from .ranks import agree_all, agree_any


@torch.no_grad()
def apply_smoothing(modifier: Any, model: torch.nn.Module) -> None:
    from compressed_tensors.utils import align_modules, update_offload_parameter
    from llmcompressor.modifiers.utils.hooks import HooksMixin

    pending = [m for m in modifier._resolved_mappings if m.smooth_name in modifier._smooth_activation_stats]
    kept = getattr(modifier, "_qw_references", None)  # the parents' calibration-pass outputs, if kept
    if not pending:
        if kept is not None:
            kept.clear()
        modifier._assert_all_activations_consumed()
        return
    parents = list(dict.fromkeys(m.parent for m in pending))
    changed: set[torch.nn.Module] = set()  # the layers the mappings so far have rescaled
    with _calibration_context(model, parents), HooksMixin.disable_hooks():
        for mapping in pending:
            parent = mapping.parent
            cache = modifier._parent_args_cache[parent]
            for batch_index in range(len(cache)):
                cache.pin_memory(batch_index)
            with align_modules([parent, mapping.smooth_layer, *mapping.balance_layers]):
                reference = kept.reference(modifier, parent, changed) if kept is not None else modifier._run_samples(parent)
                # In a distributed run every rank must skip or search together (the search calls
                # collectives): a mapping is skipped when no rank has outputs, or any has NaN/inf.
                if agree_all(not reference or all(r.numel() == 0 for r in reference)):
                    del modifier._smooth_activation_stats[mapping.smooth_name]
                    continue
                if agree_any(not _all_finite(reference)):
                    from loguru import logger

                    logger.warning(
                        f"Skipping smooth_layer {mapping.smooth_name}: NaN or inf outputs of {mapping.parent_name}."
                    )
                    del modifier._smooth_activation_stats[mapping.smooth_name]
                    continue
                original = {layer: layer.weight.clone() for layer in mapping.balance_layers}
                scales = modifier._compute_best_scale(mapping, reference, original)
                _smooth(mapping, scales, original, update_offload_parameter)
                changed.update((mapping.smooth_layer, *mapping.balance_layers))
                del modifier._smooth_activation_stats[mapping.smooth_name]
                del modifier._parent_args_cache[parent]
                del original, reference
    if kept is not None:
        kept.clear()  # a skipped mapping's outputs
    modifier._assert_all_activations_consumed()


@contextlib.contextmanager
def _calibration_context(model: torch.nn.Module, runs: list[torch.nn.Module]) -> Iterator[None]:
    """llm-compressor's ``calibration_forward_context``, without its two walks over every module
    (``model.train(False)`` on entry, the previous mode restored on exit) when the modules the
    loop runs, ``runs`` (the mappings' parents) and all their submodules, are in eval mode already:
    inside the sequential pipeline, which entered the same context, they always are. Only their
    modes can change what the loop computes. Each full walk took about 3 ms on SmolLM2-135M (397
    modules) on this project's CPU, and even reading every module's mode back cost about 1 ms per
    decoder layer there (37 ms of a SmolLM2 run), which is why only the parents' modules are read."""
    from compressed_tensors.utils import patch_attr
    from llmcompressor.utils import helpers

    with contextlib.ExitStack() as stack:
        if any(module.training for parent in runs for module in parent.modules()):
            stack.enter_context(helpers.calibration_forward_context(model))
        else:
            # calibration_forward_context looks eval_context up when it is entered
            with patch_attr(helpers, "eval_context", _unchanged):
                stack.enter_context(helpers.calibration_forward_context(model))
        yield


@contextlib.contextmanager
def _unchanged(model: torch.nn.Module) -> Iterator[None]:
    yield


def _smooth(mapping: Any, scales: torch.Tensor, original: dict, update: Any) -> None:
    """Fold the scales in: balance layers' columns times s, the smooth layer's outputs over s."""
    for layer in mapping.balance_layers:
        s = scales.to(layer.weight.device)
        update(layer, "weight", original[layer].to(layer.weight.device) * s.view(1, -1))
    smooth = mapping.smooth_layer
    s = scales.to(smooth.weight.device)
    if smooth.weight.ndim == 1:
        update(smooth, "weight", smooth.weight.div_(s))
    else:
        # a smooth layer wider than the balance layers' inputs (a fused qkv feeding o_proj):
        # its last rows are the ones feeding them, as in llm-compressor and AutoAWQ
        weight = smooth.weight
        weight[-s.size(0) :].div_(s.view(-1, 1))
        update(smooth, "weight", weight)
    if getattr(smooth, "bias", None) is not None:
        update(smooth, "bias", smooth.bias.div_(s))


def _all_finite(outputs: list[torch.Tensor]) -> bool:
    """Whether every output is finite, read back with one host synchronisation instead of one per batch."""
    if not outputs:
        return True
    return bool(torch.stack([o.isfinite().all().to(outputs[0].device) for o in outputs]).all())
