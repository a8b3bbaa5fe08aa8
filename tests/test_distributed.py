"""Several GPUs through torchrun: what can be proven without several GPUs.

The setting on every surface, the one-line refusals, the exact launch command and environment
(no token on the command line or in the plan file, NVLink multicast off), the event relay (rank
0's events only), error translation, and real AWQ runs of a tiny Llama in two processes on the
CPU under gloo compared with one process on the same samples: same choices, the same activation
means bit for bit, grid losses within float32 rounding,
the output folder written once, the same events, cancel leaving nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import threading

import pytest
import numpy as np

from qwodel_nb.cli import EXIT_USER_ERROR, main
from qwodel_nb.engine import distributed, progress
from qwodel_nb.engine.errors import CalibrationDataError, InterruptedAfterOutput, OutputError, RunCancelled, SettingsError
from qwodel_nb.engine.settings import make_settings

SECRET = "hf_DistributedSecret0123456789"


# -- the setting on every surface ---------------------------------------------------------------


def test_gpus_setting_is_validated():
    assert make_settings(model="m").gpus == 1
    assert make_settings(model="m", gpus="2").gpus == 2
    assert make_settings(model="m", num_gpus=4).gpus == 4
    for bad in (0, -1, "auto", None, True, 1.5, "two"):
        with pytest.raises(SettingsError, match="gpus"):
            make_settings(model="m", gpus=bad)


def test_quantizer_session_and_magic_accept_gpus(tiny_llama):
    from qwodel_nb import Quantizer, Session
    from qwodel_nb.magic_args import parse_body

    assert Quantizer(model_path=tiny_llama, output_dir="out", gpus=2).settings.gpus == 2
    assert Session(model=tiny_llama, output="out", gpus=2)._settings.gpus == 2
    body = parse_body(f"model: {tiny_llama}\noutput: out\ngpus: 2\n", {})
    assert body.options["gpus"] == 2


def test_more_gpus_than_devices_is_one_line(tiny_llama, calibration_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("QWODEL_DISTRIBUTED_BACKEND", raising=False)
    code = main(["quantize", tiny_llama, "--output", str(tmp_path / "out"), "--calibration-dataset", calibration_file,
                 "--gpus", "2"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert len(err.splitlines()) == 1 and "gpus=2 needs 2 CUDA GPUs" in err and "torch sees 0" in err
    assert not (tmp_path / "out").exists()
    assert main(["plan", tiny_llama, "--gpus", "0"]) == EXIT_USER_ERROR
    assert "'gpus' must be at least 1" in capsys.readouterr().err


# -- launch command, environment, plan file -----------------------------------------------------


def _plan(model, out, texts, token=None, **extra):
    from qwodel_nb.engine.plan import make_plan

    options = dict(model=model, output=str(out), calibration_dataset=texts, num_samples=8, seq_len=64, batch_size=1)
    options.update(extra)
    return make_plan(make_settings(token=token, **options))


@pytest.fixture
def gloo(monkeypatch):
    monkeypatch.setenv("QWODEL_DISTRIBUTED_BACKEND", "gloo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_host_memory_estimate_counts_every_process(tiny_llama, calibration_texts, tmp_path, gloo):
    """On a CPU (the gloo rehearsal) each process keeps its own weights and batch; the caches split
    the tokens and rank 0 alone saves, so those parts stay as for one process."""
    one = _plan(tiny_llama, tmp_path / "a", calibration_texts)
    two = _plan(tiny_llama, tmp_path / "b", calibration_texts, gpus=2)
    p1, p2 = one.est_ram.parts, two.est_ram.parts
    assert p2["weights on the CPU (x2 processes)"] == 2 * p1["weights on the CPU"] > 0
    assert p2["one batch (x2 processes)"] == 2 * p1["one batch"] > 0
    for part in ("layer cache", "AWQ cache", "saving"):
        assert p2[part] == p1[part]
    assert "x2 processes" in two.est_ram.describe()


def test_launch_command_and_environment(tiny_llama, calibration_texts, tmp_path, gloo, no_ambient_token):
    plan = _plan(tiny_llama, tmp_path / "out", calibration_texts, token=SECRET, gpus=2)
    cmd = distributed.launch_command("/tmp/qwodel-dist-x", 2, python="/usr/bin/python3")
    assert cmd == ["/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "qwodel_nb.engine.worker", "/tmp/qwodel-dist-x"]
    env = distributed.child_environment(plan, base={"PATH": "/bin"})
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert env["NVSHMEM_DISABLE_NVLS"] == "1" and env["QWODEL_DISTRIBUTED_BACKEND"] == "gloo"
    assert env["HF_TOKEN"] == SECRET and env["QWODEL_TOKEN_SOURCE"] == "argument"  # the environment only
    import qwodel_nb

    assert env["PYTHONPATH"].split(os.pathsep)[0] == os.path.dirname(os.path.dirname(qwodel_nb.__file__))
    assert not any(SECRET in part for part in cmd)
    # the plan file holds no token, and a plan with one cannot be pickled at all
    data = pickle.dumps(distributed.Job(distributed.tokenless(plan)))
    assert SECRET.encode() not in data and b"DistributedSecret" not in data
    with pytest.raises(TypeError):
        pickle.dumps(plan)
    path = tmp_path / "plan.pkl"
    distributed.write_private(str(path), data)
    assert (os.stat(path).st_mode & 0o777) == 0o600


def test_worker_restores_the_token_from_its_environment(tiny_llama, calibration_texts, tmp_path, monkeypatch,
                                                         no_ambient_token):
    from qwodel_nb.engine.worker import restore_token

    plan = distributed.tokenless(_plan(tiny_llama, tmp_path / "out", calibration_texts, token=SECRET))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("QWODEL_TOKEN_SOURCE", "argument")
    restored = restore_token(plan)
    assert restored.token.reveal() == SECRET and restored.settings.token.source == "argument"
    assert SECRET not in repr(restored.settings)


# -- events: relay and rank-0-only rendering -----------------------------------------------------


def test_event_relay_restores_events_and_skips_torn_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    seen = []
    relay = distributed.EventRelay(str(path), progress.Emitter([seen.append, lambda e: 1 / 0]))
    assert relay.pump() == 0  # no file yet
    started = progress.MappingStarted(1.0, layer=0, num_layers=2, mapping=0, num_mappings=3,
                                      smooth_layer="model.layers.0.input_layernorm", balance_layers=("a", "b"))
    point = progress.GridPoint(2.0, 0, 2, 0, 3, 4, 20, 0.2, 1.5e-3, 1e-3, None)
    line = distributed.event_to_json(point)
    path.write_text(distributed.event_to_json(started) + "\nnot json\n" + line[:10])
    assert relay.pump() == 1
    with open(path, "a") as fh:
        fh.write(line[10:] + "\n")
    assert relay.pump() == 1
    assert [type(e) for e in seen] == [progress.MappingStarted, progress.GridPoint]
    assert seen[0].balance_layers == ("a", "b")  # tuples come back as tuples
    assert dataclasses.replace(seen[1], elapsed_s=2.0) == point
    assert len(relay.emitter.errors) == 2  # a failing listener never stops the relay


def test_errors_come_back_as_the_same_types(tmp_path):
    err = distributed.translate_error({"kind": "qwodel", "type": "OutputError", "message": "Output folder x is not empty."})
    assert isinstance(err, OutputError) and err.message == "Output folder x is not empty."
    assert isinstance(distributed.translate_error({"kind": "cancelled"}), RunCancelled)
    plain = distributed.translate_error({"kind": "interrupted"})
    assert isinstance(plain, KeyboardInterrupt) and getattr(plain, "output_path", None) is None
    late = distributed.translate_error({"kind": "interrupted", "output_path": "/o/out"})
    assert isinstance(late, InterruptedAfterOutput) and late.output_path == "/o/out"
    internal = distributed.translate_error({"kind": "internal", "type": "ValueError", "message": "boom", "rank": 1})
    assert isinstance(internal, distributed.WorkerError) and "rank 1" in str(internal) and "boom" in str(internal)
    # a name that is not an error class of ours is never instantiated
    assert isinstance(distributed.translate_error({"kind": "qwodel", "type": "Secret", "message": "x"}),
                      distributed.WorkerError)
    for rank, kind in ((0, "interrupted"), (1, "qwodel")):
        (tmp_path / f"error-{rank}.json").write_text(json.dumps({"rank": rank, "kind": kind, "type": "OutputError"}))
    assert distributed.read_error(str(tmp_path))["rank"] == 1  # the user error explains the run best


def test_a_worker_interrupted_after_publishing_reports_the_output():
    from types import SimpleNamespace

    from qwodel_nb.engine.worker import error_report

    done = SimpleNamespace(phase="save", sizes=None, output_path="/o/out")
    report = error_report(KeyboardInterrupt(), 0, done, None)
    assert report["kind"] == "interrupted" and report["output_path"] == "/o/out"
    assert "output_path" not in error_report(KeyboardInterrupt(), 0, SimpleNamespace(phase="awq", output_path=None), None)


def test_plan_lists_every_gpu_used():
    from types import SimpleNamespace

    from qwodel_nb.engine.plan import gpu_headroom
    from qwodel_nb.engine.vram import GpuInfo, VramReport

    gib = 1024**3
    vram = VramReport(gpus=(GpuInfo(0, 0, "H200", 140 * gib, 10 * gib, 130 * gib),
                            GpuInfo(1, 1, "H200", 140 * gib, 40 * gib, 100 * gib),
                            GpuInfo(2, 2, "H200", 140 * gib, 0, 140 * gib)))
    info = SimpleNamespace(param_count=8 * 10**9, largest_layer_bytes=4 * 10**8, dtype_bytes=2)
    headroom, reason, placement = gpu_headroom(vram, info, "cuda", "bfloat16", gpus=2)
    assert headroom == 100 * gib - 16 * 10**9  # the fullest of the GPUs used sets the headroom
    assert "GPU 1" in reason and "fullest of the 2 used" in reason
    assert placement == "whole model on each of GPUs 0, 1"


# -- real runs: two processes under gloo against one ---------------------------------------------


def _run(plan, cancel=None):
    from qwodel_nb.engine.run import execute

    events = []
    return execute(plan, [events.append], cancel=cancel), events


def test_two_processes_choose_what_one_does(tiny_llama, calibration_texts, tmp_path, gloo):
    one, events_one = _run(_plan(tiny_llama, tmp_path / "one", calibration_texts))
    two, events_two = _run(_plan(tiny_llama, tmp_path / "two", calibration_texts, gpus=2))

    assert sorted(os.listdir(tmp_path)) == ["one", "two"]  # one output folder, no staging left
    assert two.output_path == str(tmp_path / "two")
    assert two.summary["gpus"] == 2 and two.summary["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert two.calibration["batches_per_rank"] == [4, 4]
    saved = json.loads((tmp_path / "two" / "qwodel_summary.json").read_text())
    assert saved["distributed"]["world_size"] == 2

    # rank 0's events only, the same ones in the same order as one process's
    assert [type(e).__name__ for e in events_two] == [type(e).__name__ for e in events_one]
    assert isinstance(events_two[-1], progress.RunFinished)

    a, b = one.stats.records, two.stats.records
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.smooth_layer == y.smooth_layer
        assert x.best_ratio == y.best_ratio and x.duo_scaling == y.duo_scaling
        # activation sums added up in the one-process order (engine/activation_sums.py): bit for bit;
        # the grid losses are summed per process, then across processes: float32 rounding only
        assert np.array_equal(np.asarray(y.activation_means), np.asarray(x.activation_means))
        assert y.grid_losses == pytest.approx(x.grid_losses, rel=1e-5)
    ca, cb = one.stats.clips, two.stats.clips
    assert [c.name for c in ca] == [c.name for c in cb]
    for x, y in zip(ca, cb):
        assert y.mean_ratio == pytest.approx(x.mean_ratio, rel=1e-6)


def test_worker_user_error_comes_back_as_is(tiny_llama, calibration_texts, tmp_path, gloo):
    """One sample makes one batch for two processes: the worker's one-line error, before any weight loads."""
    plan = _plan(tiny_llama, tmp_path / "out", calibration_texts, gpus=2, num_samples=1)
    with pytest.raises(CalibrationDataError, match="fewer than the 2 GPUs"):
        _run(plan)
    assert os.listdir(tmp_path) == []


def test_cancel_stops_every_process_and_writes_nothing(tiny_llama, calibration_texts, tmp_path, gloo, monkeypatch):
    """The workers are held at the second layer's search (engine/test_points.py), so the cancel
    set at the first grid point reaches the parent while they still run, however fast the run."""
    from qwodel_nb.engine.test_points import LAYER_POINT, PAUSE_ENV

    monkeypatch.setenv(PAUSE_ENV, LAYER_POINT.format(index=1))
    cancel = threading.Event()
    plan = _plan(tiny_llama, tmp_path / "out", calibration_texts, gpus=2)
    from qwodel_nb.engine.run import execute

    def on_event(event):
        if isinstance(event, progress.GridPoint):
            cancel.set()

    with pytest.raises(RunCancelled):
        execute(plan, [on_event], cancel=cancel)
    assert os.listdir(tmp_path) == []  # no output folder, no staging folder


def test_a_cancel_after_the_output_is_in_place_is_ignored(tiny_llama, calibration_texts, tmp_path, gloo):
    """As in one process: rank 0 tells the parent the moment its output is in place, and a cancel
    that comes after (here: on the relayed RunFinished, which follows the move) stops nothing; the
    parent does not claim that nothing was written while the folder is there."""
    cancel = threading.Event()
    plan = _plan(tiny_llama, tmp_path / "out", calibration_texts, gpus=2)
    from qwodel_nb.engine.run import execute

    def on_event(event):
        if isinstance(event, progress.RunFinished):
            cancel.set()

    result = execute(plan, [on_event], cancel=cancel)
    assert cancel.is_set()
    assert result.output_path == str(tmp_path / "out")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "config.json").is_file()
