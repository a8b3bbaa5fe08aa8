"""The ``qwodel`` command line: the original qwodel line, one-line user errors, vram, plan and demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import subprocess_env

from qwodel_nb.cli import EXIT_USER_ERROR, main

QWODEL = [sys.executable, "-m", "qwodel_nb"]


def _run(args, cwd=None, timeout=600):
    env = subprocess_env()
    return subprocess.run(QWODEL + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_original_cli_line(tiny_llama, offline_wikitext):
    """`qwodel quantize ./gemma-2 --backend awq --format int4 --output ./output`, only the model path changed."""
    proc = _run(["quantize", tiny_llama, "--backend", "awq", "--format", "int4", "--output", "./output"], cwd=offline_wikitext)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = offline_wikitext / "output"
    assert (out / "model.safetensors").is_file() and (out / "qwodel_summary.json").is_file()
    assert "group size 128" in proc.stdout and "Serve it with vLLM" in proc.stdout
    assert "num_samples" in proc.stdout and "no GPU" in proc.stdout
    # llm-compressor's INFO lines do not reach standard output.
    assert "Compression lifecycle" not in proc.stdout
    summary = json.loads((out / "qwodel_summary.json").read_text())
    assert summary["calibration"]["samples"] == 32  # the CPU row of the table


@pytest.mark.parametrize(
    "args, words",
    [
        (["quantize", "/no/such/model", "--output", "OUT"], ["does not exist"]),
        (["quantize", "MODEL", "--backend", "gptq", "--output", "OUT"], ["backend 'gptq'", "awq"]),
        (["quantize", "MODEL", "--format", "int8", "--output", "OUT"], ["format 'int8'", "int4"]),
        (["quantize", "MODEL"], ["--output"]),
        (["quantize", "MODEL", "--output", "OUT", "--batch-size", "many"], ["batch_size", "whole number"]),
        (["quantize", "MODEL", "--output", "OUT", "--group-size", "100"], ["group_size 100", "128, 64, 32"]),
        (["quantize", "MODEL", "--output", "OUT", "--calibration-dataset", "CSV"], ["extension", ".jsonl"]),
        (["quantize", "MODEL", "--output", "OUT", "--calibration-dataset", "wikitext:"], ["no subset"]),
        (["quantize", "MODEL", "--output", "OUT", "--ignore", "re:.*down_proj$"], ["balances", "remove it"]),
        (["quantize", "MODEL", "--output", "FULL"], ["not empty", "--overwrite"]),
        (["plan", "MODEL", "--device", "cuda"], ["no GPU"]),
    ],
)
def test_user_errors_are_one_line(args, words, tiny_llama, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    csv = tmp_path / "data.csv"
    csv.write_text("text\nhello\n")
    texts = tmp_path / "cal.txt"
    texts.write_text("one sample\n\nanother sample\n")
    subst = {"MODEL": tiny_llama, "OUT": str(tmp_path / "out"), "FULL": str(full), "CSV": str(csv)}
    argv = [subst.get(a, a) for a in args]
    if "--calibration-dataset" not in argv and argv[0] == "quantize":
        argv += ["--calibration-dataset", str(texts)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qwodel: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "out").exists()


def test_token_never_printed(tiny_llama, tmp_path, capsys):
    token = "hf_" + "S3cretT0kenForTheCli" * 2
    code = main(["plan", tiny_llama, "--token", token, "--calibration-dataset", str(tmp_path / "missing.txt")])
    captured = capsys.readouterr()
    assert code == EXIT_USER_ERROR
    assert token not in captured.out + captured.err


def test_plan_prints_resolved_settings(tiny_llama_odd, tmp_path, capsys):
    texts = tmp_path / "cal.jsonl"
    texts.write_text("\n".join(json.dumps({"text": f"sample number {i} of the set"}) for i in range(5)) + "\n")
    code = main(["plan", tiny_llama_odd, "--calibration-dataset", str(texts), "--seq-len", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "group size 32" in out and "96 input columns" in out
    assert "capped from 32 to 5: non-empty samples available" in out
    assert "64 (set by you)" in out
    assert "LlamaForCausalLM" in out


def test_vram_without_gpu(capsys):
    assert main(["vram"]) == 0
    assert "No GPU" in capsys.readouterr().out


def test_debug_shows_traceback(tmp_path):
    proc = _run(["--debug", "plan", str(tmp_path / "nothing-here")])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ModelNotFoundError" in proc.stderr


def test_demo_runs_offline(tmp_path):
    """`qwodel demo`: builds, quantizes, reloads and reports, with no network and no GPU."""
    proc = _run(["demo", "--workdir", str(tmp_path / "demo")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "group size 64" in out  # hidden size 192: the fallback from 128
    values = {}
    for line in out.splitlines():
        for name in ("original", "round-to-nearest", "AWQ W4A16"):
            if line.strip().startswith(name):
                values[name] = float(line.split()[-1])
    assert set(values) == {"original", "round-to-nearest", "AWQ W4A16"}, out
    assert all(v < 1.5 * values["original"] for v in values.values())
    assert (tmp_path / "demo" / "demo-llama-awq-int4" / "model.safetensors").is_file()


def _quantize_paused_at(point, model, tmp_path, data):
    """`qwodel quantize` started and held at a named test point (engine/test_points.py) of the run."""
    import signal
    import time

    from qwodel_nb.engine.test_points import PAUSE_ENV

    proc = subprocess.Popen(
        QWODEL + ["quantize", model, "--output", str(tmp_path / "out"), "--calibration-dataset", data,
                  "--num-samples", "8", "--seq-len", "64"],
        env=subprocess_env(**{PAUSE_ENV: point}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path,
        # a test run started in the background (nohup, `&`) passes SIGINT on as ignored, and Python
        # then never turns it into KeyboardInterrupt; the child gets the default back, as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen, deadline = "", time.time() + 300
    while f"paused at {point}" not in seen and time.time() < deadline and proc.poll() is None:
        seen += proc.stderr.readline()
    assert f"paused at {point}" in seen, seen[-2000:]
    return proc


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_nothing(signame, tiny_llama, tmp_path, calibration_file):
    """Ctrl-C or SIGTERM during AWQ (held at the second layer's search): exit code 130, one line,
    no output folder and no staging folder."""
    import signal

    proc = _quantize_paused_at("layer-1", tiny_llama, tmp_path, calibration_file)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "qwodel: interrupted; no output folder was written." in err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["calibration.txt"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_after_the_output_is_in_place_says_so(signame, tiny_llama, tmp_path, calibration_file):
    """An interrupt that lands once the output folder is in place does not claim that nothing was
    written: exit code 130, one line naming the complete output, which stays."""
    import signal

    from qwodel_nb.engine.output import check_complete

    proc = _quantize_paused_at("published", tiny_llama, tmp_path, calibration_file)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    out = tmp_path / "out"
    assert f"qwodel: interrupted after the output was written; it is complete in {out}" in err, err[-2000:]
    assert "no output folder was written" not in err and "Traceback" not in err
    check_complete(str(out))
    assert sorted(os.listdir(tmp_path)) == ["calibration.txt", "out"]  # no staging folder left
