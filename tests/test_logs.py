"""Library progress bars and log lines are kept out of the way of our own progress."""

from __future__ import annotations

import importlib


def test_library_bars_are_silenced_even_when_callers_ask_for_them():
    from tqdm import tqdm

    from qwodel_nb.engine.logs import library_bars_silenced

    dispatch = importlib.import_module("compressed_tensors.offload.dispatch")
    awq = importlib.import_module("llmcompressor.modifiers.transform.awq.base")
    with library_bars_silenced():
        # compressed-tensors passes disable= itself: the silenced bar must stay disabled anyway
        assert dispatch.tqdm(range(3), disable=False).disable is True
        assert awq.tqdm(range(3)).disable is True
    assert dispatch.tqdm is tqdm and awq.tqdm is tqdm  # restored afterwards


def test_library_logs_go_to_stderr_once(capsys):
    from loguru import logger

    from qwodel_nb.engine.logs import route_library_logs

    route_library_logs("WARNING")
    route_library_logs("WARNING")  # a second call replaces the handler instead of adding one
    logger.warning("qwodel test line")
    logger.warning("No accelerator available! Compressing model on CPU instead")
    logger.info("not shown at WARNING")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("qwodel test line") == 1
    assert "No accelerator" not in captured.err and "not shown" not in captured.err
