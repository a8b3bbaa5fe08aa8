"""Out of GPU memory: the back-off policy, and real AWQ runs on the CPU where CUDA OOM is simulated.

The simulation is at the torch boundary only: a global forward pre-hook (torch's own API) raises
``torch.OutOfMemoryError`` from a Linear layer when its input is larger than a limit, as the CUDA
allocator would. llm-compressor, transformers and torch run unchanged. The same proof on a real
GPU, with the process's memory capped, is bench/gpu_oom_check.py.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import weakref

import pytest
import torch

from qwodel_nb import GpuOutOfMemoryError, QwodelError, Session
from qwodel_nb.cli import EXIT_USER_ERROR, main
from qwodel_nb.engine import progress as ev
from qwodel_nb.engine.backoff import LAYERED, MIN_NUM_SAMPLES, MIN_SEQ_LEN, WHOLE, Sizes, next_step, out_of_memory

# ----------------------------------------------------------------------------- the policy alone


def _ladder(start: Sizes, phase: str = "awq") -> list[tuple[str, object, object]]:
    steps, tried = [], start
    while (step := next_step(tried, phase, len(steps) + 1, "CUDA out of memory.")) is not None:
        steps.append((step.setting, step.old, step.new))
        values = tried.as_dict()
        values[step.setting] = step.new
        tried = Sizes(**values)
        phase = "awq"
    return steps


def test_policy_order_on_a_gpu():
    """Batch size first, then the placement (speed only), then seq_len, then num_samples, down to the floors."""
    assert _ladder(Sizes(4, 512, 32, WHOLE)) == [
        ("batch_size", 4, 2), ("batch_size", 2, 1), ("placement", WHOLE, LAYERED),
        ("seq_len", 512, 256), ("seq_len", 256, MIN_SEQ_LEN),
        ("num_samples", 32, 16), ("num_samples", 16, MIN_NUM_SAMPLES),
    ]


def test_policy_moves_layer_inputs_off_the_gpu_first():
    """What the plan spent on speed goes first: the pipeline's layer inputs back to the CPU."""
    ladder = _ladder(Sizes(4, 512, 32, WHOLE, "gpu"))
    assert ladder[0] == ("layer_inputs", "gpu", "cpu")
    assert ladder[1:] == _ladder(Sizes(4, 512, 32, WHOLE, "cpu"))
    # out of memory while loading the weights: the placement first, the inputs on the next failure
    assert _ladder(Sizes(2, 256, 16, WHOLE, "gpu"), phase="load_model")[:2] == [
        ("placement", WHOLE, LAYERED), ("layer_inputs", "gpu", "cpu")]
    assert "layer inputs on the GPU" in Sizes(4, 512, 32, WHOLE, "gpu").describe()


def test_policy_when_the_weights_do_not_fit_while_loading():
    assert _ladder(Sizes(2, 256, 16, WHOLE), phase="load_model")[0] == ("placement", WHOLE, LAYERED)


def test_policy_on_the_cpu_and_at_the_floors():
    assert [s[0] for s in _ladder(Sizes(3, 200, 9, None))] == ["batch_size", "seq_len", "num_samples"]
    assert next_step(Sizes(1, MIN_SEQ_LEN, MIN_NUM_SAMPLES, LAYERED), "awq", 1, "x") is None
    assert next_step(Sizes(1, 64, 4, None), "awq", 1, "x") is None  # below the floors already: nothing to lower


def test_out_of_memory_is_found_through_library_wrappers():
    inner = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
    try:
        try:
            raise inner
        except torch.OutOfMemoryError as exc:
            raise RuntimeError("--- Autowrapped forward ---\n> line 3") from exc  # as llm-compressor wraps it
    except RuntimeError as wrapped:
        assert out_of_memory(wrapped) is inner
    assert out_of_memory(RuntimeError("CUDA error: out of memory")) is not None
    assert out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")) is not None
    assert out_of_memory(ValueError("shapes do not match")) is None
    assert out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory")) is None


# ----------------------------------------------------------------------------- real runs, simulated OOM


@contextlib.contextmanager
def simulated_oom(too_big):
    """Raise CUDA's out-of-memory error from any decoder layer whose 3-d input ``too_big(x)`` calls too big.

    Decoder layers see the calibration batches as they are (calibration and propagation passes);
    the AWQ grid search runs only their attention/MLP parts, on several grid points at once, which
    is bounded by the largest batch already, so it is not what a too-big batch means here.
    """
    seen: list[weakref.ref] = []

    def hook(module, args):
        if (type(module).__name__.endswith("DecoderLayer") and args and torch.is_tensor(args[0])
                and args[0].dim() == 3):
            if too_big(args[0]):
                seen.append(weakref.ref(module))
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {args[0].numel() * 4 / 2**20:.2f} MiB (simulated)."
                )

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def long_texts():
    """Texts longer than 256 tokens each: every sample fills seq_len, so no batch is cut shorter."""
    from qwodel_nb.engine.demo import generate_text

    paragraphs = generate_text(200, seed=21)
    return [" ".join(paragraphs[i : i + 8]) for i in range(0, 200, 8)]


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".qwodel")]


def test_session_backs_off_batch_size_and_finishes(tiny_llama, tmp_path, long_texts, caplog):
    """Batches of more than one sample 'do not fit': 4 -> 2 -> 1, each step an event, a log line and in the summary."""
    events: list[ev.Event] = []
    out = tmp_path / "out"
    s = Session(model=tiny_llama, output=str(out), calibration_dataset=long_texts, batch_size=4, num_samples=8, seq_len=32)
    with caplog.at_level(logging.WARNING, logger="qwodel_nb"), simulated_oom(lambda x: x.shape[0] > 1) as hit:
        result = s.run(callbacks=[events.append], progress=False)

    retries = [e for e in events if isinstance(e, ev.OutOfMemoryRetry)]
    assert [(e.attempt, e.setting, e.old, e.new) for e in retries] == [(1, "batch_size", 4, 2), (2, "batch_size", 2, 1)]
    assert all(e.phase == "awq" and "Out of GPU memory during awq" in e.message for e in retries)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("qwodel_nb")]
    assert any("retrying with batch_size 4 -> 2" in line for line in logged)
    assert any("retrying with batch_size 2 -> 1" in line for line in logged)
    # Phases start again after each retry; the run ends once.
    phases = [e.phase for e in events if isinstance(e, ev.PhaseStarted)]
    assert phases.count("load_model") == 3 and phases[-1] == "save"
    assert isinstance(events[-1], ev.RunFinished)

    assert s.state == "done" and result.calibration["batch_size"] == 1
    assert [(b["setting"], b["old"], b["new"]) for b in result.backoff] == [("batch_size", 4, 2), ("batch_size", 2, 1)]
    summary = json.loads((out / "qwodel_summary.json").read_text())
    assert summary["attempts"] == 3
    assert [b["new"] for b in summary["backoff"]] == [2, 1]
    assert summary["backoff"][0]["tried"]["batch_size"] == 4 and "simulated" in summary["backoff"][0]["error"]
    assert summary["plan"]["calibration"]["batch_size"]["source"] == "backoff"
    assert summary["calibration"]["batch_size"] == 1
    assert (out / "model.safetensors").is_file() and not _leftovers(tmp_path)
    assert "backed off" in str(s.result) and "batch_size 4 -> 2" in str(s.result)

    # Every model of the failed attempts (and of the finished one) was let go of.
    gc.collect()
    assert hit and all(ref() is None for ref in hit)


def test_cli_stops_naming_the_smallest_settings_tried(tiny_llama, tmp_path, long_texts, capsys):
    """Nothing fits: batch 2 -> 1, seq_len 256 -> 128, num_samples 16 -> 8, then one error line and exit code 2."""
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in long_texts), encoding="utf-8")
    argv = ["quantize", tiny_llama, "--output", str(tmp_path / "out"), "--calibration-dataset", str(data),
            "--batch-size", "2", "--seq-len", "256", "--num-samples", "16"]
    with simulated_oom(lambda x: True) as hit:
        code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    lines = [line for line in err.splitlines() if line.startswith("qwodel")]
    retries = [line for line in lines if "retrying with" in line]
    assert [line.split("retrying with ")[1] for line in retries] == [
        "batch_size 2 -> 1.", "seq_len 256 -> 128.", "num_samples 16 -> 8."]
    error = lines[-1]
    assert error.startswith("qwodel: error: Out of GPU memory during awq even with batch_size=1, seq_len=128, "
                            "num_samples=8, the smallest settings tried after 3 back-off steps")
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["long.jsonl"]  # no output, no staging folder
    gc.collect()
    assert hit and all(ref() is None for ref in hit)


def test_exhausted_back_off_is_a_qwodel_error():
    assert issubclass(GpuOutOfMemoryError, QwodelError) and GpuOutOfMemoryError.exit_code == EXIT_USER_ERROR
