"""engine/awq_references.py: the parents' reference outputs kept from the calibration pass.

Whole runs are real llm-compressor AWQ on the tiny Llama (tests/conftest.py), on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from qwodel_nb.engine import awq_references
from qwodel_nb.engine.awq_references import CapturedReferences

from quant_helpers import awq_run  # tests/quant_helpers.py


def test_kept_references_give_the_same_run_bit_for_bit(tiny_llama, calibration_texts, monkeypatch):
    """The fast search with its references kept, and with them computed as stock does: the same
    losses at every grid point and the same weights, bit for bit."""
    kept_model, kept, _ = awq_run(tiny_llama, calibration_texts, "fast")
    monkeypatch.setattr(awq_references, "ENABLED", False)
    computed_model, computed, _ = awq_run(tiny_llama, calibration_texts, "fast")

    assert kept.search_summary["references_kept"] == len(kept.records) - 1 > 0
    assert computed.search_summary["references_kept"] == 0
    for a, b in zip(kept.records, computed.records):
        assert a.grid_losses == b.grid_losses and a.best_ratio == b.best_ratio
    computed_state = computed_model.state_dict()
    for name, tensor in kept_model.state_dict().items():
        assert torch.equal(tensor, computed_state[name]), name


class _Modifier:
    """What CapturedReferences reads from llm-compressor's AWQModifier: the argument cache and
    ``_run_samples`` (here: the parent over the cached inputs, counted)."""

    def __init__(self, cache):
        self._parent_args_cache = cache
        self.computed = 0

    def _run_samples(self, parent):
        self.computed += 1
        return [parent(x) for x in self._parent_args_cache[parent]]


def _calibrate(refs: CapturedReferences, parents, inputs):
    hook = refs.hook()
    for parent in parents:
        for x in inputs:
            hook(parent, (x,), {}, parent(x))


def test_kept_after_one_check_and_computed_where_a_layer_inside_changed():
    torch.manual_seed(0)
    first, second, third = (torch.nn.Sequential(torch.nn.Linear(8, 8)) for _ in range(3))
    inputs = [torch.randn(4, 8), torch.randn(4, 8)]
    refs = CapturedReferences()
    modifier = _Modifier({p: inputs for p in (first, second, third)})
    _calibrate(refs, (first, second, third), inputs)

    assert torch.equal(refs.reference(modifier, first, set())[0], first(inputs[0]))
    assert modifier.computed == 1 and refs.trusted is True and refs.kept == 0  # the run's one check
    refs.reference(modifier, second, set())
    assert modifier.computed == 1 and refs.kept == 1  # kept
    with torch.no_grad():
        third[0].weight.mul_(2)  # a mapping before this one rescaled a layer inside the parent
    assert torch.equal(refs.reference(modifier, third, {third[0]})[0], third(inputs[0]))
    assert modifier.computed == 2 and refs.kept == 1


def test_a_failed_check_computes_every_reference_of_the_run():
    """A model that changes its parent's output after the call (here: the kept copy no longer
    matches) fails the one check, and nothing kept is used afterwards."""
    first, second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    inputs = [torch.randn(3, 8)]
    refs = CapturedReferences()
    modifier = _Modifier({first: inputs, second: inputs})
    _calibrate(refs, (first, second), inputs)
    refs.outputs[first][0].add_(1.0)

    refs.reference(modifier, first, set())
    assert refs.trusted is False
    refs.reference(modifier, second, set())
    assert modifier.computed == 2 and refs.kept == 0


@pytest.mark.parametrize("outputs", [0, 2])
def test_a_missing_or_extra_output_computes(outputs):
    parent = torch.nn.Linear(8, 8)
    inputs = [torch.randn(3, 8)]
    refs = CapturedReferences()
    refs.trusted = True
    refs.outputs[parent] = [parent(inputs[0]).detach()] * outputs if outputs else []
    if not outputs:
        del refs.outputs[parent]
    modifier = _Modifier({parent: inputs})
    refs.reference(modifier, parent, set())
    assert modifier.computed == 1 and refs.kept == 0


def test_outputs_on_other_devices_are_not_kept(monkeypatch):
    monkeypatch.setattr(awq_references, "DEVICES", ("cuda",))
    refs = CapturedReferences()
    parent = torch.nn.Linear(4, 4)
    refs.hook()(parent, (torch.randn(2, 4),), {}, parent(torch.randn(2, 4)))
    assert refs.outputs == {}
