"""A run on several GPUs: torchrun starts one worker process per GPU; this process watches them.

``execute(plan)`` comes here when ``plan.gpus`` > 1. This module

1. writes the plan (without the token) into a private folder (0700, the file 0600);
2. starts ``python -m torch.distributed.run --standalone --nproc_per_node N -m
   qwodel_nb.engine.worker FOLDER`` in its own session, with the token (if any) in the child's
   environment only, NVLink multicast off, and this package importable;
3. relays rank 0's progress events (JSON lines in the folder) to the listeners, so progress
   bars, the magic and the panel work as they do for one GPU;
4. on Cancel, Ctrl-C or SIGTERM stops the whole tree (SIGTERM, then SIGKILL) and raises as a
   one-GPU run would; the workers' staging folders are removed by their own clean-up;
5. turns a worker's failure back into the same error type and message (``error-RANK.json``),
   an out-of-memory failure into the same back-off steps (the run starts again, lowered), and
   rank 0's result into the same :class:`~qwodel_nb.engine.run.RunResult`.

Only rank 0 writes events, the result and the output folder; see ``engine/worker.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable

from . import errors as error_types
from . import progress
from .backoff import Sizes, apply_step, exhausted_message, next_step
from .errors import GpuOutOfMemoryError, InterruptedAfterOutput, QwodelError, RunCancelled
from .progress import Emitter, Listener, OutOfMemoryRetry
from .ranks import BACKEND_ENV, requested_backend

PLAN_NAME = "plan.pkl"
EVENTS_NAME = "events.jsonl"
RESULT_NAME = "result.pkl"
#: written by rank 0 the moment the output folder is in place: its path
PUBLISHED_NAME = "published"
TOKEN_SOURCE_ENV = "QWODEL_TOKEN_SOURCE"
#: the GPU hosts require NVLink multicast off (NCCL NVLS, torch symmetric memory, NVSHMEM)
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
POLL_S = 0.05
STOP_GRACE_S = 30.0


class WorkerError(RuntimeError):
    """A worker failed with something that is not a user error (its traceback is on standard error)."""


@dataclasses.dataclass
class Job:
    """What a worker needs: the plan without its token, the attempt number, earlier back-off steps."""

    plan: Any
    attempt: int = 1
    steps: list = dataclasses.field(default_factory=list)


def launch_command(workdir: str, nproc: int, python: str | None = None) -> list[str]:
    """The torchrun command line; it names the private folder, never a secret."""
    return [
        python or sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node", str(nproc),
        "-m", "qwodel_nb.engine.worker", workdir,
    ]


def child_environment(plan: Any, base: dict | None = None) -> dict[str, str]:
    """The workers' environment: the caller's, the token (only here), multicast off, this package."""
    env = dict(os.environ if base is None else base)
    env.update(MULTICAST_OFF)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[BACKEND_ENV] = requested_backend()
    if plan.token is not None:
        env["HF_TOKEN"] = plan.token.reveal()
        env[TOKEN_SOURCE_ENV] = plan.token.source
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def tokenless(plan: Any) -> Any:
    """A copy of the plan without the token (settings included), safe to write to a file."""
    return dataclasses.replace(plan, token=None, settings=dataclasses.replace(plan.settings, token=None))


def write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def event_to_json(event: progress.Event) -> str:
    return json.dumps({"event": type(event).__name__, **dataclasses.asdict(event)})


def event_from_json(line: str) -> progress.Event | None:
    """An event written by :func:`event_to_json`; None for a line that is not one (a torn write)."""
    try:
        data = json.loads(line)
        cls = getattr(progress, data.pop("event"))
        if not (isinstance(cls, type) and issubclass(cls, progress.Event)):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**kwargs)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class EventRelay:
    """Reads the JSON lines rank 0 appends and hands each event to the listeners, restamped with
    this process's elapsed time (a failing listener never stops the run, as with :class:`Emitter`)."""

    def __init__(self, path: str, emitter: Emitter):
        self.path = path
        self.emitter = emitter
        self._offset = 0
        self._partial = ""

    def pump(self) -> int:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
                self._offset = fh.tell()
        except FileNotFoundError:
            return 0
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the rest
        sent = 0
        for line in lines:
            event = event_from_json(line) if line.strip() else None
            if event is None:
                continue
            event = dataclasses.replace(event, elapsed_s=self.emitter.elapsed())
            for listener in self.emitter.listeners:
                try:
                    listener(event)
                except Exception as exc:
                    self.emitter.errors.append(exc)
            sent += 1
        return sent


def translate_error(report: dict) -> BaseException:
    """The exception a one-GPU run would have raised, from a worker's error report."""
    kind, name, message = report.get("kind"), report.get("type", ""), report.get("message", "")
    if kind == "cancelled":
        return RunCancelled(message or "The run was cancelled; nothing was written.")
    if kind == "interrupted":
        return InterruptedAfterOutput(report["output_path"]) if report.get("output_path") else KeyboardInterrupt()
    cls = getattr(error_types, name, None)
    if kind == "qwodel" and isinstance(cls, type) and issubclass(cls, QwodelError):
        return cls(message)
    rank = report.get("rank", "?")
    return WorkerError(f"rank {rank} of the distributed run failed: {name}: {message}")


def read_error(workdir: str) -> dict | None:
    """The most telling worker error: a user error or out-of-memory before anything else, rank 0 first."""
    reports = []
    for name in sorted(os.listdir(workdir)):
        if name.startswith("error-") and name.endswith(".json"):
            try:
                with open(os.path.join(workdir, name), encoding="utf-8") as fh:
                    reports.append(json.load(fh))
            except (OSError, ValueError):
                continue
    if not reports:
        return None
    priority = {"qwodel": 0, "oom": 1, "internal": 2, "cancelled": 3, "interrupted": 4}
    return min(reports, key=lambda r: (priority.get(r.get("kind"), 5), r.get("rank", 0)))


def published(workdir: str) -> str | None:
    """The output folder rank 0 has moved into place, if it has (``PUBLISHED_NAME``)."""
    try:
        with open(os.path.join(workdir, PUBLISHED_NAME), encoding="utf-8") as fh:
            return fh.read() or None
    except OSError:
        return None


def _stop(proc: subprocess.Popen, workdir: str) -> None:
    """SIGTERM torchrun's session (it stops its workers, which clean up), then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    # workers live in sessions of their own: stop any that outlived torchrun
    for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
        if name.startswith("pid-"):
            try:
                with open(os.path.join(workdir, name)) as fh:
                    pid = int(fh.read().strip())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass


def launch(plan: Any, emitter: Emitter, job: Job) -> Any:
    """Run one attempt under torchrun; returns rank 0's RunResult or raises the worker's error."""
    workdir = tempfile.mkdtemp(prefix="qwodel-dist-")  # 0700
    proc: subprocess.Popen | None = None
    try:
        write_private(os.path.join(workdir, PLAN_NAME), pickle.dumps(job))
        relay = EventRelay(os.path.join(workdir, EVENTS_NAME), emitter)
        proc = subprocess.Popen(
            launch_command(workdir, plan.gpus),
            env=child_environment(plan),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None,
            start_new_session=True,  # Ctrl-C reaches this process only; it stops the tree itself
        )
        while True:
            relay.pump()
            if emitter.cancel is not None and emitter.cancel.is_set():
                if published(workdir):  # as in one process: a cancel after the output is in place is ignored
                    emitter.cancel = None
                    continue
                _stop(proc, workdir)
                raise RunCancelled("The run was cancelled; nothing was written.")
            if proc.poll() is not None:
                relay.pump()
                break
            time.sleep(POLL_S)
        result_path = os.path.join(workdir, RESULT_NAME)
        if proc.returncode == 0 and os.path.exists(result_path):
            with open(result_path, "rb") as fh:
                return pickle.load(fh)
        report = read_error(workdir)
        if report is None:
            raise WorkerError(
                f"the distributed run failed (torchrun exit code {proc.returncode}) without a report; "
                "its log is above on standard error."
            )
        if report.get("kind") == "oom":
            raise _OutOfMemory(report)
        raise translate_error(report)
    except BaseException as exc:
        if proc is not None:
            _stop(proc, workdir)
        written = None
        if isinstance(exc, (KeyboardInterrupt, RunCancelled)):
            written = published(workdir) or (read_error(workdir) or {}).get("output_path")
        if written and not isinstance(exc, InterruptedAfterOutput):  # stopped after rank 0 had published it
            raise InterruptedAfterOutput(written) from None
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


class _OutOfMemory(Exception):
    def __init__(self, report: dict):
        super().__init__(report.get("message", "out of memory"))
        self.report = report


def run_distributed(plan: Any, listeners: Iterable[Listener] = (), cancel: Any = None) -> Any:
    """:func:`qwodel_nb.engine.run.execute` for ``plan.gpus`` > 1: the same events, errors and result."""
    import logging

    emitter = Emitter(listeners, cancel)
    steps: list = []
    number = 0
    while True:
        number += 1
        try:
            return launch(plan, emitter, Job(tokenless(plan), number, list(steps)))
        except _OutOfMemory as oom:
            report = oom.report
            tried = Sizes(**report["sizes"]) if report.get("sizes") else Sizes(
                plan.batch_size, plan.seq_len, plan.num_samples, None)
            step = next_step(tried, report.get("phase", "awq"), number, report.get("message", ""))
            if step is None:
                raise GpuOutOfMemoryError(
                    exhausted_message(tried, report.get("phase", "awq"), steps, report.get("message", ""))
                ) from None
            steps.append(step)
            logging.getLogger("qwodel_nb.engine").warning("qwodel: %s", step.message())
            plan = apply_step(plan, step)
            emitter.emit(OutOfMemoryRetry, attempt=number, phase=step.phase, setting=step.setting,
                         old=step.old, new=step.new, message=step.message())
