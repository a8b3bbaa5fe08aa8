"""The fast search's calibration hooks (engine/awq_hooks.py) against llm-compressor's own, run side by side."""

from __future__ import annotations

import inspect
import types

import pytest
import torch

from qwodel_nb.engine import awq_hooks


class Parent(torch.nn.Module):
    def __init__(self, balance: torch.nn.Linear) -> None:
        super().__init__()
        self.balance = balance

    def forward(self, hidden, mask=None, **kwargs):
        return self.balance(hidden)


def _modifiers(parents):
    """llm-compressor's AWQModifier and qwodel's, each with its hooks on its own copy of the modules."""
    from llmcompressor.modifiers.transform.awq import AWQModifier as StockAWQModifier

    from qwodel_nb.engine.awq_capture import AWQModifier

    made = []
    for cls, parent in zip((StockAWQModifier, AWQModifier), parents):
        modifier = cls()
        modifier._resolved_mappings = [types.SimpleNamespace(parent=parent, balance_layers=[parent.balance],
                                                            activation_hook_target=None, smooth_name="norm")]
        modifier.offload_device = None
        modifier._setup_activation_cache_hooks()
        made.append(modifier)
    return made


@pytest.fixture
def session_state():
    from llmcompressor.core import active_session

    state = active_session().state
    saved = (state.loss_masks, state.current_batch_idx)
    yield state
    state.loss_masks, state.current_batch_idx = saved


@pytest.mark.parametrize("masked", [False, True])
def test_the_hooks_record_what_stock_records(session_state, masked):
    torch.manual_seed(0)
    balance = torch.nn.Linear(8, 4)
    parents = [Parent(balance), Parent(torch.nn.Linear(8, 4))]
    parents[1].balance.load_state_dict(balance.state_dict())
    stock, fast = _modifiers(parents)
    batches = [torch.randn(3, 5, 8) * 100 for _ in range(3)]
    masks = [torch.rand(3, 5) > 0.4 for _ in batches]
    session_state.loss_masks = masks if masked else None
    try:
        for index, hidden in enumerate(batches):
            session_state.current_batch_idx = index
            for parent in parents:
                parent(hidden, mask=None, extra=index)
    finally:
        stock.remove_hooks()
        fast.remove_hooks()

    (stock_sum, stock_count), (fast_sum, fast_count) = stock._smooth_activation_stats["norm"], fast._smooth_activation_stats["norm"]
    assert torch.equal(fast_sum, stock_sum) and fast_sum.dtype == torch.float32
    expected = sum(int(m.sum()) for m in masks) if masked else 3 * 3 * 5
    assert int(fast_count) == int(stock_count) == expected and fast_count.device.type == "cpu"
    stock_args = [stock._parent_args_cache[parents[0]].fetch(i) for i in range(3)]
    fast_args = [fast._parent_args_cache[parents[1]].fetch(i) for i in range(3)]
    for s, f in zip(stock_args, fast_args):
        assert list(f) == list(s) == ["hidden", "mask", "extra"]
        assert torch.equal(f["hidden"], s["hidden"]) and f["mask"] is None and f["extra"] == s["extra"]


def test_the_parent_hook_makes_a_signature_once_per_kind_of_forward(monkeypatch):
    made = []
    original = inspect.signature

    def counting(function, *args, **kwargs):
        made.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    recorded = []
    hook = awq_hooks.parent_arguments_hook(lambda module, arguments: recorded.append(dict(arguments)))
    from compressed_tensors.offload import offload_module

    parent, sibling = Parent(torch.nn.Linear(2, 2)), Parent(torch.nn.Linear(2, 2))
    for module in (parent, sibling):  # as llm-compressor leaves them: each forward wrapped in a closure of its own
        offload_module(module, "cpu", "cpu")
    assert parent.forward.__func__ is not sibling.forward.__func__
    handle = parent.register_forward_pre_hook(hook, with_kwargs=True)
    other = sibling.register_forward_pre_hook(hook, with_kwargs=True)
    x = torch.zeros(1, 2)
    for _ in range(3):
        parent(x, None)
        sibling(x, mask=None)
    other.remove()
    assert len(made) == 1 and recorded[-1] == {"hidden": x, "mask": None}

    parent.forward = lambda hidden, scale=2: hidden * scale  # a forward replaced on the instance: bound anew
    parent(x)
    handle.remove()
    assert len(made) == 2 and list(recorded[-1]) == ["hidden"]
