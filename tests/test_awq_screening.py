"""Token screening in the AWQ grid search: the plan and the decisions (engine/awq_screening.py), and
whole runs through llm-compressor where screening is on, against the stock loop."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from qwodel_nb.engine import awq_screening, awq_search, screening_precision
from qwodel_nb.engine.awq_screening import (
    Cut,
    cut_arguments,
    estimated_losses,
    first_best,
    screening_cuts,
    survivors,
    unconfirmed_neighbours,
)

from quant_helpers import awq_run  # tests/quant_helpers.py

#: llm-compressor 0.14's grid with duo_scaling=True: identity first, then 19 duo-scaled ratios
GRID = [(0.0, False)] + [(i / 18, True) for i in range(19)]


def _batch(rows: int, seq: int, hidden: int = 4) -> dict:
    return {"hidden_states": torch.zeros(rows, seq, hidden), "attention_mask": torch.zeros(1, 1, seq, seq)}


def test_no_screening_when_the_slice_would_be_a_large_share_of_the_tokens():
    assert screening_cuts([_batch(8, 48)], 20) is None  # 384 tokens: the 512-token floor is more than all
    assert screening_cuts([_batch(4, 256)], 20) is None  # 1,024 tokens: the floor is half
    assert screening_cuts([_batch(5, 1024)], 20) is None  # two samples, the fewest screened, are 40%
    assert screening_cuts([_batch(16, 512)], 6) is None  # a grid this small gains nothing


def test_screening_takes_whole_samples_from_the_first_batches():
    # 8 x 256: the 512-token floor, two samples (25%)
    assert screening_cuts([_batch(8, 256)], 20) == [Cut(0, 2)]
    # one batch of 16 x 512 (8,192 tokens): 1/8 is 1,024 tokens, two samples
    assert screening_cuts([_batch(16, 512)], 20) == [Cut(0, 2)]
    # sixteen batches of one sample: the first two batches
    assert screening_cuts([_batch(1, 512) for _ in range(16)], 20) == [Cut(0, 1), Cut(1, 1)]
    # 128 x 512 in batches of 16 (65,536 tokens): 8,192 tokens, one whole batch
    assert screening_cuts([_batch(16, 512) for _ in range(8)], 20) == [Cut(0, 16)]
    # a slice that ends inside the second batch
    assert screening_cuts([_batch(3, 512) for _ in range(8)], 20) == [Cut(0, 3)]
    assert screening_cuts([_batch(3, 300) for _ in range(10)], 20) == [Cut(0, 3), Cut(1, 1)]
    # long samples: the token target is met by one, but two are screened at least
    assert screening_cuts([_batch(1, 4096) for _ in range(16)], 20) == [Cut(0, 1), Cut(1, 1)]


def test_cut_arguments_cuts_the_batch_and_leaves_broadcast_arguments_alone():
    cos, sin = torch.zeros(4, 6, 8), torch.zeros(1, 6, 8)
    args = {"x": torch.arange(4 * 6 * 2.0).view(4, 6, 2), "mask": torch.zeros(1, 1, 6, 6), "pos": (cos, sin),
            "ids": torch.arange(4), "flag": True}
    out = cut_arguments(args, 2)
    assert torch.equal(out["x"], args["x"][:2])
    assert out["mask"].shape == (1, 1, 6, 6)
    assert out["pos"][0].shape == (2, 6, 8) and out["pos"][1].shape == (1, 6, 8)
    assert out["ids"].shape == (4,)  # one-dimensional: never taken for a batch
    assert out["flag"] is True
    assert cut_arguments(args, 4)["x"] is args["x"]


def test_survivors_are_the_least_screening_losses_and_those_the_samples_cannot_rule_out():
    # [point][sample]: point 2 is best on total; point 3 is worse on every sample alike (ruled out);
    # point 1 is worse on total but better on one sample (kept: the samples disagree)
    errors = [[9.0, 9.0], [1.0, 5.0], [2.0, 2.0], [3.0, 3.1], [8.0, 8.2]]
    assert survivors(errors, keep=1, z=2.0, tie=0.0) == [1, 2]
    assert survivors(errors, keep=3, z=2.0, tie=0.0) == [1, 2, 3]
    assert survivors(errors, keep=1, z=0.0, tie=0.0) == [2]  # no allowance: only the best
    assert survivors(errors, keep=1, z=0.0, tie=0.6) == [1, 2, 3]  # 6 and 6.1 are within 60% of 4
    assert survivors([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 2.0]], keep=2, z=0.0, tie=0.0) == [0, 1, 2]  # ties
    assert 1 not in survivors([[1.0, 1.0], [float("nan"), 0.0], [2.0, 2.0]], keep=1)  # NaN never survives by the test
    assert survivors([[3.0], [1.0], [2.0]], keep=2) == [1, 2]  # one sample: no spread, only the best ones


def test_the_climb_asks_for_unconfirmed_neighbours_in_the_same_series():
    confirmed = {5: 1.0, 6: 0.9, 7: 1.1}
    assert unconfirmed_neighbours(6, confirmed, GRID) == []  # a confirmed local minimum
    assert unconfirmed_neighbours(7, confirmed, GRID) == [8]
    assert unconfirmed_neighbours(1, {1: 1.0}, GRID) == [2]  # the identity point is not a neighbour of ratio 0
    assert unconfirmed_neighbours(0, {0: 1.0}, GRID) == []  # identity is alone in its series
    both = [(i / 9, duo) for i in range(10) for duo in (False, True)]  # duo_scaling="both": interleaved
    assert unconfirmed_neighbours(3, {3: 1.0}, both) == [1, 5]
    assert first_best({4: 1.0, 2: 1.0, 7: 0.5, 9: float("nan")}) == 7
    assert first_best({4: 1.0, 2: 1.0}) == 2  # the first minimum in grid order, as stock keeps it


def test_confirm_climbs_to_a_local_minimum_of_the_full_loss():
    # the slice likes points 3-5 best; on all tokens the loss keeps falling down to point 8
    full = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 2.5] + [5.0] * 9
    errors = [[v, v] for v in [9.0, 8.0, 7.0, 1.0, 1.1, 1.2] + [9.0] * 14]
    asked = []

    def evaluate(points):
        asked.append(list(points))
        return [full[i] for i in points]

    confirmed = awq_screening.confirm(errors, evaluate, GRID)
    assert asked[0] == [3, 4, 5]  # the three best of the slice; the rest ruled out (equal on both samples)
    assert first_best(confirmed) == 8 and {7, 9} <= set(confirmed)  # climbed to 8, its neighbours confirmed
    assert all(confirmed[i] == full[i] for i in confirmed)
    assert len(confirmed) == 7  # 3 survivors, then 6, 7, 8, 9 one climb step at a time


def test_a_run_stops_screening_when_it_confirms_most_points():
    assert awq_screening.still_pays([(20, 20)] * 3)  # too early to judge
    assert not awq_screening.still_pays([(12, 20)] * 4)  # 60% confirmed: the slice rules little out
    assert awq_screening.still_pays([(6, 20)] * 4 + [(20, 20)])


def test_estimates_sit_on_the_confirmed_losses_level():
    screen = [4.0, 2.0, 1.0, 3.0]
    losses = estimated_losses(screen, {1: 4.0, 2: 2.0})
    assert losses[1:3] == [4.0, 2.0]  # confirmed losses are kept as they are
    assert losses[0] == pytest.approx(8.0) and losses[3] == pytest.approx(6.0)  # scaled by 6/3


# -- whole runs through llm-compressor ----------------------------------------------------------------


def _awq_run(model_dir, search, *, batch_size=4):
    """16 samples of 128 tokens of the demo's generated text, on the tiny Llama."""
    from qwodel_nb.engine.demo import generate_text

    texts = generate_text(16, seed=21, sentences=(12, 14))
    _, modifier, calibration = awq_run(model_dir, texts, search, seq_len=128, num_samples=16, batch_size=batch_size)
    assert calibration.lengths == [128] * 16
    return modifier


@pytest.fixture
def screening_on_small_runs(monkeypatch):
    """The tests' runs are 16 x 128 tokens: screen on two samples (256 tokens), every mapping by forward passes."""
    monkeypatch.setattr(awq_screening, "SCREEN_MIN_TOKENS", 256)
    monkeypatch.setattr(awq_search, "_gram_is_cheaper", lambda *a, **k: False)


@pytest.mark.parametrize("batch_size,low", [(16, True), (1, True), (16, False)])
def test_screened_search_confirms_stock_losses_and_chooses_a_stock_local_minimum(
    tiny_llama, screening_on_small_runs, monkeypatch, batch_size, low
):
    """With the screening passes in bfloat16 (engine/screening_precision.py; forced here, so that a
    CPU without AMX runs it too) and in float32: either way the confirmed losses are stock's."""
    monkeypatch.setattr(screening_precision, "LOW_PRECISION", low)
    stock = _awq_run(tiny_llama, "stock", batch_size=batch_size)
    fast = _awq_run(tiny_llama, "fast", batch_size=batch_size)

    summary = fast.search_summary
    assert summary["screened"] == len(fast.records) == len(stock.records) > 0
    assert summary["screened_in"] == {"bfloat16" if low else "float32": summary["screened"]}
    assert 3 * summary["screened"] <= summary["screened_points_confirmed"] < summary["screened_points"] / 2
    same = 0
    for s, f in zip(stock.records, fast.records):
        exact = f.exact_points
        assert len(exact) == 20 and sum(exact) >= awq_screening.SCREEN_KEEP and not all(exact)
        chosen = f.grid_ratios.index(f.best_ratio) if f.duo_scaling else 0
        stock_best = min(range(20), key=lambda i: (s.grid_losses[i], i))
        assert exact[chosen] and f.best_loss == f.grid_losses[chosen]
        for i in range(20):
            if exact[i]:  # confirmed points carry the stock loss
                assert f.grid_losses[i] == pytest.approx(s.grid_losses[i], rel=1e-4, abs=1e-12)
            else:  # the others an estimate from the screening slice, on the same level
                assert math.isfinite(f.grid_losses[i]) and f.grid_losses[i] > 0
        assert f.best_loss == min(v for v, e in zip(f.grid_losses, exact) if e)
        if exact[stock_best]:  # stock's best survived screening: then it is the choice
            assert chosen == stock_best
        # the choice is a local minimum of the stock loss among its grid neighbours (the climb)
        for n in unconfirmed_neighbours(chosen, {}, GRID):
            assert s.grid_losses[chosen] <= s.grid_losses[n] * (1 + 1e-4)
        same += chosen == stock_best
    assert same >= 0.75 * len(fast.records)


def test_records_keep_which_losses_are_estimates(tiny_llama, screening_on_small_runs):
    from qwodel_nb.engine.stats import MappingRecord

    fast = _awq_run(tiny_llama, "fast")
    record = fast.records[0]
    data = record.as_dict()
    assert [g["exact"] for g in data["grid"]] == list(record.exact_points)
    again = MappingRecord.from_dict(data)
    assert again.exact_points == record.exact_points and again.grid_exact
    plain = MappingRecord.from_dict({**data, "grid": [{k: v for k, v in g.items() if k != "exact"} for g in data["grid"]]})
    assert plain.grid_exact == () and all(plain.exact_points)  # files from before screening: all exact


def test_capture_gives_screening_up_for_the_rest_of_the_run(tiny_llama, screening_on_small_runs, monkeypatch):
    monkeypatch.setattr(awq_screening, "SCREEN_GIVE_UP_AFTER", 2)
    monkeypatch.setattr(awq_screening, "SCREEN_GIVE_UP_SHARE", 0.0)  # any confirmed point is too many
    fast = _awq_run(tiny_llama, "fast")
    assert fast.search_summary["screened"] == 2 < len(fast.records)
    assert [bool(r.grid_exact) for r in fast.records] == [True, True] + [False] * (len(fast.records) - 2)


def test_without_screening_every_point_is_exact(tiny_llama, screening_on_small_runs, monkeypatch):
    monkeypatch.setattr(awq_search, "SCREENING", False)
    fast = _awq_run(tiny_llama, "fast")
    assert fast.search_summary["screened"] == 0
    assert all(r.grid_exact == () for r in fast.records)


def test_a_parent_that_fails_in_bfloat16_screens_in_its_own_dtype(tiny_llama, screening_on_small_runs, monkeypatch):
    """Screening in bfloat16 is a speed measure: where a parent's code fails with bfloat16 products,
    that mapping screens in float32 and the run goes on."""

    @contextlib.contextmanager
    def refusing(low):
        if low is not None:
            raise RuntimeError("expected scalar type Float but found BFloat16")
        yield

    monkeypatch.setattr(screening_precision, "LOW_PRECISION", True)
    monkeypatch.setattr(screening_precision, "computing_in", refusing)
    fast = _awq_run(tiny_llama, "fast")
    summary = fast.search_summary
    assert summary["screened"] == len(fast.records) > 0
    assert summary["screened_in"] == {"float32": summary["screened"]}
