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


def _sigint_at_run_finished(event) -> None:
    from qwodel_nb.engine.progress import RunFinished

    if isinstance(event, RunFinished):  # emitted once the output is in place, before execute returns
        signal.raise_signal(signal.SIGINT)


def test_an_interrupt_after_the_output_is_in_place_says_it_is_complete(tiny_llama, tmp_path, calibration_texts):
    """Ctrl-C after the folder was moved into place: the output stays, and the error says where it is
    (not "nothing written"); the model is let go of all the same."""
    from qwodel_nb.engine.errors import InterruptedAfterOutput, interrupted_message
    from qwodel_nb.engine.output import check_complete

    out = tmp_path / "out"
    s = Session(model=tiny_llama, output=str(out), calibration_dataset=calibration_texts, **RUN)
    with sigint_during_awq(after_calls=10**9) as seen, pytest.raises(InterruptedAfterOutput) as caught:
        s.run(callbacks=[_sigint_at_run_finished], progress=False)
    assert caught.value.output_path == str(out)
    assert "complete in " + str(out) in interrupted_message(caught.value)
    check_complete(str(out))
    assert os.listdir(tmp_path) == ["out"]
    assert s.state == "cancelled" and s.error is caught.value
    _nothing_holds_the_model(seen)


def test_an_interrupt_during_the_evaluation_keeps_the_result(tiny_llama, tmp_path, calibration_texts, heldout_texts):
    """Ctrl-C while the finished output is being evaluated: the run is done and its result kept."""
    from qwodel_nb.engine.errors import InterruptedAfterOutput
    from qwodel_nb.engine.progress import RunFinished

    finished = []

    def hook(module, args):
        if finished and isinstance(module, torch.nn.Linear) and len(finished) == 1:
            finished.append("fired")
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "out"
    s = Session(model=tiny_llama, output=str(out), calibration_dataset=calibration_texts, **RUN)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(InterruptedAfterOutput):
            s.run(callbacks=[lambda e: isinstance(e, RunFinished) and finished.append(e)], progress=False,
                  evaluate=True, eval_text=heldout_texts)
    finally:
        handle.remove()
        signal.signal(signal.SIGINT, previous)
    assert finished[-1] == "fired"
    assert s.state == "done" and s.result is not None and s.result.output_path == str(out)
    assert s.result.perplexity is None and s.result.evaluation_error == "The evaluation was interrupted."
    assert (out / "model.safetensors").is_file()


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
