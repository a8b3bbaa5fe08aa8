"""engine/interrupts.py and the output's move into place: an interrupt never cuts the move in two."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from qwodel_nb.engine.interrupts import interrupts_held
from qwodel_nb.engine.output import check_complete, staged_output


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_inside_the_block_is_raised_after_it(default_sigint):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the block")  # not cut short
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_change(default_sigint):
    term = signal.getsignal(signal.SIGTERM)
    with interrupts_held():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.getsignal(signal.SIGTERM) == term


def test_sigterm_goes_to_the_handler_that_was_there(default_sigint):
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with interrupts_held():
            signal.raise_signal(signal.SIGTERM)
            assert got == []
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_the_block_just_runs():
    errors = []

    def body():
        try:
            with interrupts_held():
                errors.append("ran")
        except BaseException as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == ["ran"]


def _write_output(folder: str) -> None:
    for name in ("config.json", "recipe.yaml", "qwodel_summary.json", "stats.json", "tokenizer.json"):
        with open(os.path.join(folder, name), "w") as fh:
            fh.write("{}")
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(b"weights")


def test_an_interrupt_during_the_move_lands_after_it_with_the_output_known(tmp_path, default_sigint):
    """The signal arrives while the folder is being moved (here: from the callback that reports the
    move); it is raised once the output is in place and the caller has been told where."""
    final = str(tmp_path / "out")
    told = []

    def on_published(path):
        signal.raise_signal(signal.SIGINT)
        told.append(path)

    with pytest.raises(KeyboardInterrupt):
        with staged_output(final, overwrite=False, on_published=on_published) as tmp:
            _write_output(tmp)
    assert told == [final]
    check_complete(final)
    assert os.listdir(tmp_path) == ["out"]


def test_an_interrupt_before_the_move_leaves_nothing(tmp_path, default_sigint):
    told = []
    with pytest.raises(KeyboardInterrupt):
        with staged_output(str(tmp_path / "out"), overwrite=False, on_published=told.append) as tmp:
            _write_output(tmp)
            signal.raise_signal(signal.SIGINT)
    assert told == [] and os.listdir(tmp_path) == []
