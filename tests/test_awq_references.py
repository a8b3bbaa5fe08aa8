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


def test_a_gpu_keeps_outputs_up_to_its_cap_and_computes_the_rest(monkeypatch):
    """Outputs off the CPU count against the cap: a parent whose next output would pass it keeps
    none (its references are computed), and what a mapping takes out is counted off again. The
    "meta" device stands in for a GPU here: the accounting reads only sizes and device types."""
    monkeypatch.setattr(awq_references, "DEVICES", ("meta",))
    size = 4 * 8 * 4  # one float32 output of 4 x 8
    refs = CapturedReferences(gpu_bytes=3 * size)
    hook = refs.hook()
    first, second, third = (torch.nn.Linear(8, 8) for _ in range(3))
    output = torch.empty(4, 8, device="meta")
    for parent, batches in ((first, 2), (second, 2), (third, 1)):
        for _ in range(batches):
            hook(parent, (), {}, output)
    # first's two fit; second's second would pass the cap, so second keeps nothing; third's fits
    assert [len(refs.outputs.get(p, [])) for p in (first, second, third)] == [2, 0, 1]
    assert refs.gpu_held == 3 * size and refs.dropped == {second}
    hook(second, (), {}, output)  # dropped for this calibration pass: no late, partial list
    assert second not in refs.outputs

    modifier = _Modifier({first: [None, None], second: [None, None], third: [None]})
    modifier._run_samples = lambda parent: ["computed"] * len(modifier._parent_args_cache[parent])
    refs.trusted = True
    assert len(refs.reference(modifier, first, set())) == 2 and refs.kept == 1
    assert refs.gpu_held == size
    assert refs.reference(modifier, second, set()) == ["computed", "computed"] and second not in refs.dropped
    refs.clear()
    assert refs.gpu_held == 0 and refs.outputs == {}
