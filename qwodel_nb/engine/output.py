"""The output folder: checked before any work, written aside, moved into place only when complete.

A run writes into a hidden staging folder beside the output (same parent, so moving it is a
``rename`` on one file system). Only after every file (weights, config, tokenizer, recipe,
statistics, summary) is written, checked and flushed to disk does that folder take the output's
name. Replacing an old output (``overwrite=True``) is one atomic exchange of the two folders
where the platform offers it (Linux ``renameat2(RENAME_EXCHANGE)``), else two renames; the old
folder is removed afterwards.

So at any instant the output's name holds the previous state, or nothing, or the complete new
output. A process killed half-way (SIGKILL, power cut of the process) leaves at most a hidden
``.qwodel-tmp-*`` sibling named after its host and process id; the next run for the same output
removes those of processes that no longer exist, and puts a replaced old output back in place
when the kill fell between the two renames of the fallback path.

An interrupt (Ctrl-C, SIGTERM) is held back while the output is moved into place, so it lands
either before (nothing written, the staging folder removed) or after (the output complete; the
callback ``on_published`` has already told the caller where).

The tests prove the above by killing or pausing the process at the named points of
:mod:`~qwodel_nb.engine.test_points`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from typing import Callable, Iterator

from .errors import OutputError
from .interrupts import interrupts_held
from .test_points import KILL_ENV, PAUSE_ENV, SAVE_POINTS, test_point  # noqa: F401 - the tests' names

SUMMARY_NAME = "qwodel_summary.json"
STATS_NAME = "stats.json"
_TMP_PREFIX = ".qwodel-tmp-"
_NEW, _OLD = "new", "old"



# ----------------------------------------------------------------------------- before the run


def _existing_ancestor(path: str) -> str:
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def probe_writable(directory: str) -> str | None:
    """Why nothing can be created in ``directory``, or None when something can.

    A real attempt (a hidden folder made and removed at once) rather than ``os.access``, which
    says yes to root on read-only or special file systems.
    """
    if not os.path.isdir(directory):
        return f"{directory!r} is a file, not a folder"
    try:
        made = tempfile.mkdtemp(prefix=".qwodel-probe-", dir=directory)
    except OSError as exc:
        return f"cannot create anything in {directory!r} ({exc.strerror or type(exc).__name__})"
    try:
        os.rmdir(made)
    except OSError:  # pragma: no cover - we just made it empty
        shutil.rmtree(made, ignore_errors=True)
    return None


def check_output(path: str | None, overwrite: bool) -> str:
    """Validate the output folder before anything is computed; return its absolute path."""
    if not path:
        raise OutputError("No output folder given: set 'output' (CLI: --output DIR).")
    if "\x00" in str(path):
        raise OutputError("The output folder name contains a NUL character; give a plain folder path.")
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise OutputError(f"Output {path!r} is a file; give a folder path.")
    if os.path.isdir(full) and _entries(full) and not overwrite:
        raise OutputError(f"Output folder {path!r} is not empty; choose another folder or pass overwrite=True (CLI: --overwrite).")
    probe_dir = _existing_ancestor(os.path.dirname(full))
    problem = probe_writable(probe_dir)
    if problem:
        raise OutputError(f"Cannot write the output {path!r}: {problem}; choose an output folder you can write to.")
    return full


def _entries(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise OutputError(f"Output folder {folder!r} cannot be read ({exc.strerror}); choose another folder.") from None


# ----------------------------------------------------------------------------- leftovers


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _stage_name(kind: str, final: str) -> str:
    return f"{_TMP_PREFIX}{kind}-{os.path.basename(final)}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _parse_stage_name(name: str) -> tuple[str, str, str, int] | None:
    """(kind, output name, host tag, pid) of a staging folder's name, or None if it is not one."""
    if not name.startswith(_TMP_PREFIX):
        return None
    kind, _, rest = name[len(_TMP_PREFIX):].partition("-")
    parts = rest.rsplit("-", 3)
    if kind not in (_NEW, _OLD) or len(parts) != 4 or not parts[2].isdigit():
        return None
    base, host, pid, _ = parts
    return kind, base, host, int(parts[2])


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_staging(final: str) -> list[str]:
    """Staging folders of ``final`` left by processes of this host that no longer run."""
    final = os.path.abspath(final)
    parent, base = os.path.dirname(final), os.path.basename(final)
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        parsed = _parse_stage_name(name)
        if parsed and parsed[1] == base and parsed[2] == _host_tag() and not _pid_alive(parsed[3]):
            found.append(os.path.join(parent, name))
    return found


def clean_stale_staging(final: str) -> list[str]:
    """Remove what killed runs left beside ``final``; returns the paths dealt with.

    A replaced old output that a kill left aside (between the two renames of the fallback
    path, when ``final`` is absent) is put back under its name: the previous state. Everything
    else (half-written new outputs, old outputs already replaced) is removed.
    """
    final = os.path.abspath(final)
    handled = []
    for path in stale_staging(final):
        kind = _parse_stage_name(os.path.basename(path))[0]
        if kind == _OLD and not os.path.lexists(final):
            try:
                os.rename(path, final)
                handled.append(path)
                continue
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)
        handled.append(path)
    return handled


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def staged_output(final: str, overwrite: bool, on_published: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a hidden staging folder beside ``final``; on success it becomes ``final``, complete.

    ``on_published(final)`` is called as soon as the output is in place, before any interrupt
    held during the move is let through.
    """
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    clean_stale_staging(final)
    tmp = os.path.join(parent, _stage_name(_NEW, final))
    os.mkdir(tmp, 0o755)
    try:
        test_point("staged")
        yield tmp
        check_complete(tmp)
        sync_tree(tmp)
        test_point("summary")
        with interrupts_held():
            _publish(tmp, final, overwrite)
            if on_published is not None:
                on_published(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # after the move ``tmp`` is gone: nothing to do
        raise
    test_point("published")


#: files without which a folder is not a usable output
REQUIRED_FILES = ("config.json", "recipe.yaml", SUMMARY_NAME, STATS_NAME)


def check_complete(folder: str) -> None:
    """Raise :class:`OutputError` unless ``folder`` holds every file an output needs."""
    names = set(os.listdir(folder))
    missing = [n for n in REQUIRED_FILES if n not in names]
    if not any(n.startswith("tokenizer") for n in names):
        missing.append("tokenizer files")
    index = "model.safetensors.index.json"
    if index in names:
        with open(os.path.join(folder, index), encoding="utf-8") as fh:
            shards = set(json.load(fh).get("weight_map", {}).values())
        missing += sorted(s for s in shards if s not in names)
    elif "model.safetensors" not in names:
        missing.append("model.safetensors")
    if missing:
        raise OutputError(f"The output was not moved into place: {', '.join(missing)} missing from what was written.")


def sync_tree(folder: str) -> None:
    """Flush every file of ``folder`` and the folder itself to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(root)


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the platform cannot."""
    if not sys.platform.startswith("linux") or os.environ.get("QWODEL_NO_RENAME_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange: fall back to two renames
    raise OSError(code, os.strerror(code), b)


def _publish(tmp: str, final: str, overwrite: bool) -> None:
    parent = os.path.dirname(final)
    if os.path.isdir(final):
        if not os.listdir(final):
            os.rmdir(final)
        elif not overwrite:
            raise OutputError(f"Output folder {final!r} was filled by someone else during the run; the result was not moved there.")
        elif _exchange(tmp, final):
            # ``final`` is now the new output, ``tmp`` holds the old one.
            _sync_dir(parent)
            test_point("swapped")
            shutil.rmtree(tmp, ignore_errors=True)
            return
        else:
            aside = os.path.join(parent, _stage_name(_OLD, final))
            os.rename(final, aside)
            try:
                test_point("aside")
                os.rename(tmp, final)
            except BaseException:
                os.rename(aside, final)
                raise
            _sync_dir(parent)
            test_point("swapped")
            shutil.rmtree(aside, ignore_errors=True)
            return
    os.rename(tmp, final)
    _sync_dir(parent)


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
