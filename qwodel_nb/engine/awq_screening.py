"""Token screening for the AWQ grid search: every grid point on a slice of the calibration
samples, then on all tokens only the points the slice cannot rule out.

Stock AWQ runs the parent module over every calibration token for every grid point (20 by
default). The loss of a grid point is a sum over tokens, and a slice of the samples usually rules
most points out. Not always: on some of SmolLM2's mappings a few tokens with huge activations
decide, and keeping a fixed number of leading points chose differently from stock in 12 of 90
mappings (measured: bench/RESULTS.md, "Token screening"). So the search:

1. **screens**: every grid point on the first samples, ``SCREEN_FRACTION`` of the tokens (at
   least ``SCREEN_MIN_TOKENS`` and two samples), keeping each sample's squared error apart;
2. **confirms** on all tokens, with exactly the stock arithmetic (so their losses are stock's
   losses bit for bit), every point the screening cannot rule out: the ``SCREEN_KEEP`` best; every
   point whose screening loss is within ``SCREEN_TIE`` of the best's (where the curve is this
   flat, a slice cannot order the points); and every point whose mean per-sample excess over the
   screening best is within ``SCREEN_Z`` standard errors of zero (a paired test over the screened
   samples). Where a few tokens with huge activations make the loss jump from one ratio to the
   next, the samples disagree and more points are confirmed;
3. **climbs**: while a grid neighbour of the best confirmed point (the next ratio up or down in
   the same series) is unconfirmed, confirms it too, so the choice is a local minimum of the
   stock loss over the grid, not only of the screening loss.

The choice is the first minimum among the confirmed points. It is stock's choice whenever stock's
best point survives screening, and otherwise a point whose stock loss is a local minimum next to
it. The other points' losses are estimates: their screening loss scaled by the ratio of full to
screening loss over the confirmed points; the search's result says which are which.

Where it pays (measured, bench/RESULTS.md): on a CPU, where the forward passes are bound by
their arithmetic and it takes most of the point-token work away, so it is on by default there.
On a CPU with AMX the screening passes compute in bfloat16 (:mod:`.screening_precision`): they
only rank the points, and ranked SmolLM2's the same way as in float32.
On a GPU the same runs gained 6% (SmolLM2-135M, bound by the host) or lost time (a Llama-3-8B
shape with random weights, whose flat loss curves make screening confirm nearly every point),
so it is off there. A run also stops screening once its screened mappings confirm most of their
points (:func:`still_pays`): the slice cost time and ruled little out.

Distributed runs do not screen: each rank holds other samples, so the slice, and with it the
choice, would depend on the number of processes. This module only plans and decides;
:mod:`.awq_search` runs the passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .batch_arguments import map_batch, rows_and_tokens

#: share of the calibration tokens every grid point is screened on
SCREEN_FRACTION = 1 / 8
#: ... but at least this many tokens and samples (fewer rank the points too noisily)
SCREEN_MIN_TOKENS = 512
SCREEN_MIN_SAMPLES = 2
#: points with the least screening loss that are always confirmed on all tokens
SCREEN_KEEP = 3
#: and every point within this share of the screening best's loss
SCREEN_TIE = 0.02
#: and every point within this many standard errors of the screening best (paired over samples)
SCREEN_Z = 2.0
#: screening only pays when the screened slice is at most this share of the tokens
SCREEN_MAX_SHARE = 0.3
#: devices where it is on by default
SCREEN_DEVICES = ("cpu",)
#: a run stops screening when, after this many screened mappings, more than this share of their
#: grid points had to be confirmed
SCREEN_GIVE_UP_AFTER = 4
SCREEN_GIVE_UP_SHARE = 0.5


def screening_default(device: torch.device) -> bool:
    """Whether screening is on by default for a search on ``device``."""
    return device.type in SCREEN_DEVICES


def still_pays(history: Sequence[tuple[int, int]]) -> bool:
    """Whether a run should keep screening, from its screened mappings' (confirmed, grid points).
    The search applies the same rule to fused attention's confirmations (``awq_capture``)."""
    if len(history) < SCREEN_GIVE_UP_AFTER:
        return True
    confirmed, points = sum(c for c, _ in history), sum(n for _, n in history)
    return confirmed <= SCREEN_GIVE_UP_SHARE * points


@dataclass(frozen=True)
class Cut:
    """The first ``rows`` samples of calibration batch ``batch``."""

    batch: int
    rows: int


def screening_cuts(batches: Sequence[dict[str, Any]], num_points: int) -> list[Cut] | None:
    """The slice of the calibration batches to screen on, or None when screening would not pay.

    Whole samples are taken from the first batches on, until ``SCREEN_FRACTION`` of the tokens
    (at least ``SCREEN_MIN_TOKENS``, and ``SCREEN_MIN_SAMPLES`` samples) is reached. None when
    that slice is more than ``SCREEN_MAX_SHARE`` of the tokens, or when the grid is too small to
    gain from it.
    """
    if num_points < 3 * SCREEN_KEEP or not batches:  # too few points to gain from ruling some out
        return None
    sizes = [rows_and_tokens(arguments) for arguments in batches]
    total = sum(tokens for _, tokens in sizes)
    target = max(math.ceil(total * SCREEN_FRACTION), SCREEN_MIN_TOKENS)
    cuts, taken, samples = [], 0, 0
    for b, (rows, tokens) in enumerate(sizes):
        per_row = tokens // rows if rows else 0
        if per_row == 0:
            continue
        need = min(rows, max(math.ceil((target - taken) / per_row), SCREEN_MIN_SAMPLES - samples))
        cuts.append(Cut(b, need))
        taken += need * per_row
        samples += need
        if taken >= target and samples >= SCREEN_MIN_SAMPLES:
            break
    if taken > total * SCREEN_MAX_SHARE or samples < SCREEN_MIN_SAMPLES:
        return None
    return cuts


def cut_arguments(arguments: dict[str, Any], rows: int) -> dict[str, Any]:
    """The parent's cached keyword arguments for the first ``rows`` samples of the batch (the
    tensors that follow the batch are cut; :mod:`.batch_arguments`)."""
    if rows >= next(iter(arguments.values())).shape[0]:
        return dict(arguments)
    return map_batch(arguments, lambda value: value[:rows])


def survivors(errors: Sequence[Sequence[float]], keep: int = SCREEN_KEEP, z: float = SCREEN_Z,
              tie: float = SCREEN_TIE) -> list[int]:
    """The points screening cannot rule out, in grid order, from ``errors[point][sample]``.

    The ``keep`` with the least total (earlier points first on ties), every point whose total is
    within ``tie`` of the least, and every point whose per-sample excess over the best point has
    a mean within ``z`` standard errors of zero.
    """
    totals = [_finite(math.fsum(row)) for row in errors]
    order = sorted(range(len(errors)), key=lambda i: (totals[i], i))
    kept = set(order[:keep])
    best = errors[order[0]]
    units = len(best)
    for i, row in enumerate(errors):
        if i in kept or not math.isfinite(totals[i]):
            continue
        if totals[i] <= totals[order[0]] * (1 + tie):
            kept.add(i)
            continue
        if units < 2:
            continue
        excess = [a - b for a, b in zip(row, best)]
        mean = math.fsum(excess) / units
        spread = math.sqrt(math.fsum((e - mean) ** 2 for e in excess) / (units - 1))
        if mean <= z * spread / math.sqrt(units):
            kept.add(i)
    return sorted(kept)


def first_best(confirmed: dict[int, float]) -> int:
    """The confirmed point with the least loss; the first in grid order on ties, as stock keeps it."""
    return min(confirmed, key=lambda i: (_finite(confirmed[i]), i))


def unconfirmed_neighbours(best: int, confirmed: dict[int, float], grid: Sequence[tuple[float, bool]]) -> list[int]:
    """The grid neighbours of ``best`` (adjacent ratio in the same duo-scaling series) not yet confirmed."""
    series = [i for i, (_, duo) in enumerate(grid) if duo == grid[best][1]]
    series.sort(key=lambda i: grid[i][0])
    at = series.index(best)
    around = series[max(at - 1, 0) : at + 2]
    return [i for i in around if i not in confirmed]


def confirm(errors: Sequence[Sequence[float]], evaluate: Callable[[list[int]], list[float]],
            grid: Sequence[tuple[float, bool]]) -> dict[int, float]:
    """The confirmed points and their full losses: the :func:`survivors` of the screening errors,
    then the climb. ``evaluate(points)`` gives the stock losses of ``points`` on all tokens."""
    confirmed: dict[int, float] = {}
    todo = survivors(errors)
    while todo:
        confirmed.update(zip(todo, evaluate(todo)))
        todo = unconfirmed_neighbours(first_best(confirmed), confirmed, grid)
    return confirmed


def estimated_losses(screen_losses: Sequence[float], confirmed: dict[int, float]) -> list[float]:
    """Every point's loss: stock's for the confirmed, the screening loss scaled for the others.

    The scale is the ratio of the confirmed points' summed full losses to their summed screening
    losses (finite ones only), so the estimates sit on the same level as the confirmed losses.
    """
    pairs = [(confirmed[i], screen_losses[i]) for i in confirmed
             if math.isfinite(confirmed[i]) and math.isfinite(screen_losses[i])]
    full, screen = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    ratio = full / screen if screen > 0 else 1.0
    return [confirmed[i] if i in confirmed else screen_losses[i] * ratio for i in range(len(screen_losses))]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf
