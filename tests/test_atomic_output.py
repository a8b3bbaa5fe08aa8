"""The output folder appears only complete: real `qwodel quantize` processes killed (SIGKILL) during the save.

Each killed process is a real CLI run (real AWQ on the tiny model) that kills itself at a named
point of the save (``QWODEL_TEST_KILL_AT``, read only by ``test_points.test_point``), or pauses there
and is killed from outside. Afterwards the output's name holds the previous state exactly, or
nothing, or (after the final rename) the complete new output; hidden leftovers are removed, or the
previous output put back, by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import subprocess_env

from qwodel_nb import OutputError, Quantizer
from qwodel_nb.engine import output
from qwodel_nb.engine.output import (
    KILL_ENV,
    PAUSE_ENV,
    SUMMARY_NAME,
    check_complete,
    check_output,
    clean_stale_staging,
    probe_writable,
    stale_staging,
)

RUN = ["--num-samples", "2", "--seq-len", "16"]


def _snapshot(folder) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def _hidden(parent) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.startswith(".qwodel"))


@pytest.fixture
def previous(tmp_path):
    """An output folder from an earlier run (its content only matters byte for byte)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"previous": true}\n')
    (out / "model.safetensors").write_bytes(os.urandom(4096))
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("kept until the new output is complete")
    return out


def _quantize(model, out, data, *, env=None, overwrite=False, pause=None):
    cmd = [sys.executable, "-m", "qwodel_nb", "quantize", model, "--output", str(out),
           "--calibration-dataset", data, *RUN] + (["--overwrite"] if overwrite else [])
    full_env = subprocess_env(**(env or {}))
    if pause is None:
        return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)
    full_env[PAUSE_ENV] = pause
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.time() + 600
    while f"paused at {pause}" not in seen and time.time() < deadline and proc.poll() is None:
        seen += proc.stderr.readline()
    assert f"paused at {pause}" in seen, seen[-2000:]
    proc.kill()  # SIGKILL from outside, while the save is half-way
    proc.communicate(timeout=60)
    return proc


def _killed(proc) -> bool:
    return proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)


# ----------------------------------------------------------------------------- killed processes


def test_fresh_output_killed_half_way_leaves_nothing(tiny_llama, tmp_path, calibration_file):
    out = tmp_path / "out"
    proc = _quantize(tiny_llama, out, calibration_file, env={KILL_ENV: "weights"})
    assert _killed(proc), proc.stderr[-2000:]
    assert not out.exists()
    leftovers = _hidden(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".qwodel-tmp-new-out-")
    # The next run for this output removes what the killed one left, then writes a complete folder.
    Quantizer(model_path=tiny_llama, output_dir=str(out), calibration_dataset=calibration_file,
              num_samples=2, seq_length=16).quantize()
    assert _hidden(tmp_path) == []
    check_complete(str(out))


def test_overwrite_killed_just_before_the_swap_keeps_the_previous_output(tiny_llama, tmp_path, calibration_file, previous):
    """Every file of the new output written and flushed, the swap not yet made."""
    before = _snapshot(previous)
    proc = _quantize(tiny_llama, previous, calibration_file, env={KILL_ENV: "summary"}, overwrite=True)
    assert _killed(proc), proc.stderr[-2000:]
    assert _snapshot(previous) == before  # byte for byte the previous state
    assert clean_stale_staging(str(previous)) and _hidden(tmp_path) == []
    assert _snapshot(previous) == before


def test_overwrite_killed_after_the_swap_has_the_complete_new_output(tiny_llama, tmp_path, calibration_file, previous):
    proc = _quantize(tiny_llama, previous, calibration_file, env={KILL_ENV: "swapped"}, overwrite=True)
    assert _killed(proc), proc.stderr[-2000:]
    check_complete(str(previous))  # the new output, whole
    assert json.loads((previous / SUMMARY_NAME).read_text())["calibration"]["samples"] == 2
    assert not (previous / "notes").exists()
    clean_stale_staging(str(previous))  # the old output, left aside, goes
    assert _hidden(tmp_path) == []


def test_overwrite_without_atomic_exchange_killed_between_the_renames(tiny_llama, tmp_path, calibration_file, previous):
    """Where the file system cannot exchange two folders: two renames; a kill between them is repaired."""
    before = _snapshot(previous)
    proc = _quantize(tiny_llama, previous, calibration_file, env={KILL_ENV: "aside", "QWODEL_NO_RENAME_EXCHANGE": "1"},
                     overwrite=True)
    assert _killed(proc), proc.stderr[-2000:]
    assert not previous.exists()  # nothing under the name, the previous output aside
    clean_stale_staging(str(previous))
    assert _snapshot(previous) == before  # put back: the previous state
    assert _hidden(tmp_path) == []


def test_killed_from_outside_during_the_save(tiny_llama, tmp_path, calibration_file, previous):
    before = _snapshot(previous)
    _quantize(tiny_llama, previous, calibration_file, overwrite=True, pause="weights")
    assert _snapshot(previous) == before
    assert len(stale_staging(str(previous))) == 1
    clean_stale_staging(str(previous))
    assert _hidden(tmp_path) == []


# ----------------------------------------------------------------------------- the pieces, in-process


def test_staging_of_a_live_process_is_left_alone(tmp_path):
    final = tmp_path / "out"
    mine = tmp_path / output._stage_name("new", str(final))
    mine.mkdir()
    other_output = tmp_path / output._stage_name("new", str(tmp_path / "other"))
    other_output.mkdir()
    assert stale_staging(str(final)) == []  # this process is alive; another output's staging is not ours
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / mine.name.replace(f"-{os.getpid()}-", f"-{pid}-")
    stale.mkdir()
    assert stale_staging(str(final)) == [str(stale)]


def test_incomplete_folders_are_not_published(tmp_path):
    folder = tmp_path / "staged"
    folder.mkdir()
    for name in ("config.json", "recipe.yaml", SUMMARY_NAME, "stats.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(OutputError, match="model-00002-of-00002.safetensors missing"):
        check_complete(str(folder))
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x")
    check_complete(str(folder))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(OutputError, match="tokenizer files missing"):
        check_complete(str(folder))


def test_output_checks(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output(str(blocker), overwrite=False)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(str(blocker / "out"), overwrite=False)
    assert check_output(str(tmp_path / "new" / "deeper"), overwrite=False) == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert probe_writable(str(tmp_path)) is None and os.listdir(tmp_path) == ["a-file"]
