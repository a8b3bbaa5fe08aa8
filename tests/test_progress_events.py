"""The event emitter: bursts of events (a mapping's grid points) are the events emit() makes."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from qwodel_nb.engine.errors import RunCancelled
from qwodel_nb.engine.progress import Emitter, GridPoint

COMMON = dict(layer=2, num_layers=30, mapping=1, num_mappings=3, num_points=20)


def _rows(n: int) -> list[dict]:
    return [dict(point=i, ratio=i / 19, loss=1.0 + i, best_loss=1.0, eta_s=None if i == 0 else 3.5 - i / 10)
            for i in range(n)]


def test_a_burst_gives_the_events_emit_gives():
    seen, one_by_one = [], []
    emitter = Emitter([seen.append])
    emitter.emit_each(GridPoint, COMMON, _rows(4))
    for row in _rows(4):
        one_by_one.append(Emitter().emit(GridPoint, **COMMON, **row))
    assert len(seen) == 4
    for burst, single in zip(seen, one_by_one):
        assert type(burst) is GridPoint and burst.elapsed_s >= 0
        assert dataclasses.replace(burst, elapsed_s=0.0) == dataclasses.replace(single, elapsed_s=0.0)
        assert repr(dataclasses.replace(burst, elapsed_s=0.0)) == repr(dataclasses.replace(single, elapsed_s=0.0))
        with pytest.raises(dataclasses.FrozenInstanceError):
            burst.loss = 0.0
    assert [e.elapsed_s for e in seen] == sorted(e.elapsed_s for e in seen)


def test_a_burst_checks_cancel_before_each_event_and_survives_a_failing_listener():
    cancel = threading.Event()
    seen = []

    def listener(event):
        seen.append(event)
        if event.point == 1:
            cancel.set()
        raise ValueError("a renderer bug")

    emitter = Emitter([listener], cancel)
    with pytest.raises(RunCancelled):
        emitter.emit_each(GridPoint, COMMON, _rows(5))
    assert [e.point for e in seen] == [0, 1] and len(emitter.errors) == 2


def test_a_burst_fills_defaults_and_refuses_unknown_fields_as_the_dataclass_does():
    seen = []
    emitter = Emitter([seen.append])
    row = _rows(1)[0]
    del row["eta_s"]  # a field with a default
    emitter.emit_each(GridPoint, COMMON, [row])
    assert seen[0].eta_s is None and seen[0].loss == 1.0
    with pytest.raises(TypeError):
        emitter.emit_each(GridPoint, COMMON, [dict(_rows(1)[0], colour="red")])
