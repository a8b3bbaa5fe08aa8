"""Interruption: a real SIGINT (what a notebook's interrupt button and Ctrl-C send) in the middle of AWQ.

The signal is raised in the main thread from inside the model's forward pass (a torch forward
pre-hook calls ``signal.raise_signal``), so Python's own handler turns it into KeyboardInterrupt
wherever llm-compressor happens to be. Afterwards: no output folder, no staging folder, the model
and its caches let go of (no reference left anywhere, llm-compressor's session and torch.fx's
registry included), and the same Session runs again. The CLI's SIGINT/SIGTERM case is
tests/test_cli.py::test_interrupted_run_leaves_nothing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import weakref

import pytest
import torch

from qwodel_nb import Session

RUN = dict(num_samples=4, seq_len=32, batch_size=1)


@contextlib.contextmanager
def sigint_during_awq(after_calls: int = 40):
    """Send SIGINT to this process from inside the Nth Linear forward; yields weak references to the modules seen."""
    seen: list[weakref.ref] = []
    fired = []

    def hook(module, args):
        if isinstance(module, torch.nn.Linear):
            seen.append(weakref.ref(module))
            if len(seen) == after_calls and not fired:
                fired.append(True)
                signal.raise_signal(signal.SIGINT)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield seen
    finally:
        handle.remove()
        signal.signal(signal.SIGINT, previous)


def _nothing_holds_the_model(seen) -> None:
    from llmcompressor.core import active_session
    from torch.fx import _symbolic_trace

    gc.collect()
    assert seen and all(ref() is None for ref in seen), "a module of the interrupted run is still referenced"
    assert active_session().lifecycle.state.model is None
    assert not any("torch.fx.wrap" in ns for ns in _symbolic_trace._wrapped_fns_to_patch.values())


def test_keyboard_interrupt_in_session_run(tiny_llama, tmp_path, calibration_texts):
    s = Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts, **RUN)
    with sigint_during_awq() as seen, pytest.raises(KeyboardInterrupt):
        s.run(progress=False)
    assert s.state == "cancelled" and isinstance(s.error, KeyboardInterrupt)
    assert os.listdir(tmp_path) == []  # no output, no staging folder
    _nothing_holds_the_model(seen)
    s.run(progress=False)  # the same session, usable again
    assert s.state == "done" and (tmp_path / "out" / "model.safetensors").is_file()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_keyboard_interrupt_in_the_magic(tiny_llama, tmp_path, calibration_texts):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "qwodel_nb")
    try:
        shell.user_ns.update(model_dir=tiny_llama, out_dir=str(tmp_path / "out"), texts=calibration_texts)
        cell = "%%qwodel s --no-plot\nmodel: {model_dir}\noutput: {out_dir}\ncalibration: {texts}\nnum_samples: 4\nseq_len: 32\n"
        with sigint_during_awq() as seen, capture_output() as cap:
            result = shell.run_cell(cell)
        assert result.error_in_exec is None
        shown = [o.data.get("text/plain", "") for o in cap.outputs]
        assert any("Interrupted; the run stopped and no output was written" in text for text in shown), shown
        assert "Traceback" not in cap.stdout + cap.stderr
        s = shell.user_ns["s"]
        assert s.state == "cancelled" and os.listdir(tmp_path) == []
        _nothing_holds_the_model(seen)
        with capture_output():
            shell.run_cell("%qwodel run --no-plot")
        assert s.state == "done" and (tmp_path / "out" / "config.json").is_file()
    finally:
        shell.run_line_magic("unload_ext", "qwodel_nb")


def test_an_internal_error_keeps_its_library_traceback_as_text():
    """Frames below the engine are cut to free memory; for a bug report their text stays in the notes."""
    from qwodel_nb.engine.release import release

    def deep_library_code(model):
        raise RuntimeError("a bug somewhere inside a library")

    big = torch.nn.Linear(8, 8)
    ref = weakref.ref(big)
    try:
        try:
            deep_library_code(big)
        except RuntimeError as exc:
            release(exc)
            raise
    except RuntimeError as caught:
        error = caught
    del big
    gc.collect()
    assert ref() is None
    assert any("deep_library_code" in note and "Library traceback" in note for note in error.__notes__)
