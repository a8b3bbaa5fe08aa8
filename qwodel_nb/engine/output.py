"""The output folder: checked before any work, written aside, moved into place only when complete.

A run writes into a hidden temporary sibling of the output folder (same parent, so the final
``rename`` is atomic on one file system). Only after every file (weights, config, tokenizer,
recipe, summary) is written does that folder take the output's name; an old output that the
user allowed to be overwritten is first renamed aside and removed afterwards. A failure at any
point removes the temporary folder and leaves the previous state untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator

from .errors import OutputError

SUMMARY_NAME = "qwodel_summary.json"
STATS_NAME = "stats.json"
_TMP_PREFIX = ".qwodel-tmp-"


def check_output(path: str | None, overwrite: bool) -> str:
    """Validate the output folder before anything is computed; return its absolute path."""
    if not path:
        raise OutputError("No output folder given: set 'output' (CLI: --output DIR).")
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise OutputError(f"Output {path!r} is a file; give a folder path.")
    if os.path.isdir(full) and os.listdir(full) and not overwrite:
        raise OutputError(f"Output folder {path!r} is not empty; choose another folder or pass overwrite=True (CLI: --overwrite).")
    parent = os.path.dirname(full)
    probe_dir = parent
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(probe_dir)
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write under {probe_dir!r}; choose an output folder you can write to.")
    return full


@contextlib.contextmanager
def staged_output(final: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary folder beside ``final``; on success it becomes ``final``."""
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX + os.path.basename(final) + "-", dir=parent)
    try:
        yield tmp
        _publish(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: str, final: str, overwrite: bool) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if os.path.isdir(final):
        if not os.listdir(final):
            os.rmdir(final)
        elif overwrite:
            aside = os.path.join(os.path.dirname(final), f"{_TMP_PREFIX}old-{uuid.uuid4().hex[:8]}")
            os.rename(final, aside)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(aside, final)
                raise
            shutil.rmtree(aside, ignore_errors=True)
            return
        else:
            raise OutputError(f"Output folder {final!r} was filled by someone else during the run; the result was not moved there.")
    os.rename(tmp, final)


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def folder_bytes(path: str, suffix: str = "") -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(suffix):
                total += os.path.getsize(os.path.join(root, name))
    return total
