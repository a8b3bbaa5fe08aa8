"""One process of a run on several GPUs, started by torchrun (see ``engine/distributed.py``).

    python -m torch.distributed.run --standalone --nproc_per_node N -m qwodel_nb.engine.worker FOLDER

Each rank joins the process group (NCCL through compressed-tensors' ``init_dist``, one GPU per
rank; gloo on CPUs for the rehearsal), reads the plan from FOLDER, takes the token from its
environment, and runs the same attempt as a one-GPU run on its share of the calibration batches.
Rank 0 alone writes progress events (JSON lines), the output folder and the result; any rank
that fails writes ``error-RANK.json`` (one line, token redacted) and exits non-zero, after which
torchrun stops the others. SIGTERM behaves like Ctrl-C, so a staged output is removed.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from typing import Any

from .distributed import EVENTS_NAME, PLAN_NAME, PUBLISHED_NAME, RESULT_NAME, TOKEN_SOURCE_ENV, Job, event_to_json, write_private


class EventWriter:
    """A listener that appends each event as one JSON line, flushed at once."""

    def __init__(self, path: str):
        self._fh = open(path, "a", encoding="utf-8")

    def __call__(self, event: Any) -> None:
        self._fh.write(event_to_json(event) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def join_process_group(backend: str) -> None:
    import torch.distributed as dist

    if backend == "gloo":
        dist.init_process_group(backend="gloo", init_method="env://")
        return
    from compressed_tensors.distributed import init_dist

    init_dist()  # NCCL, this rank's GPU (LOCAL_RANK) made current


def restore_token(plan: Any) -> Any:
    """The plan with the token the parent put into this process's environment (if any)."""
    import dataclasses

    from .secrets import Secret

    value = os.environ.get("HF_TOKEN")
    if not value:
        return plan
    token = Secret(value, os.environ.get(TOKEN_SOURCE_ENV, "HF_TOKEN"))
    return dataclasses.replace(plan, token=token, settings=dataclasses.replace(plan.settings, token=token))


def error_report(exc: BaseException, rank: int, attempt: Any, token: Any) -> dict:
    from .backoff import first_sentence, out_of_memory
    from .errors import QwodelError, RunCancelled
    from .secrets import redact

    def one_line(text: str) -> str:
        lines = redact(str(text), token).strip().splitlines()
        return lines[0][:500] if lines else ""

    report: dict = {"rank": rank, "type": type(exc).__name__, "message": one_line(exc)}
    oom = None if isinstance(exc, (KeyboardInterrupt, RunCancelled, QwodelError)) else out_of_memory(exc)
    if isinstance(exc, KeyboardInterrupt):
        report["kind"] = "interrupted"
        if getattr(attempt, "output_path", None):  # rank 0 had moved the output into place first
            report["output_path"] = attempt.output_path
    elif isinstance(exc, RunCancelled):
        report["kind"] = "cancelled"
    elif isinstance(exc, QwodelError):
        report["kind"] = "qwodel"
        report["message"] = redact(exc.message, token)
    elif oom is not None:
        report["kind"] = "oom"
        report["message"] = one_line(first_sentence(oom))
        report["phase"] = getattr(attempt, "phase", "awq")
        sizes = getattr(attempt, "sizes", None)
        report["sizes"] = sizes.as_dict() if sizes is not None else None
    else:
        report["kind"] = "internal"
    return report


def _telling_parent(published: Any, workdir: str) -> Any:
    """``_Attempt.published`` that also writes the output's path to ``PUBLISHED_NAME`` in ``workdir``
    (called while interrupts are held, right after the move)."""

    def tell(path: str) -> None:
        published(path)
        write_private(os.path.join(workdir, PUBLISHED_NAME), path.encode())

    return tell


def _sigterm(signum, frame):  # torchrun stops workers with SIGTERM: clean up like Ctrl-C
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import json

    argv = sys.argv[1:] if argv is None else argv
    workdir = argv[0]
    rank = int(os.environ.get("RANK", "0"))
    os.dup2(2, 1)  # library prints go to standard error; standard output stays the parent's
    signal.signal(signal.SIGTERM, _sigterm)
    write_private(os.path.join(workdir, f"pid-{rank}"), str(os.getpid()).encode())

    from .ranks import requested_backend
    from .run import _Attempt, _attempt

    backend = requested_backend()
    attempt, plan, writer = None, None, None
    try:
        from .logs import route_library_logs

        route_library_logs("WARNING")
        with open(os.path.join(workdir, PLAN_NAME), "rb") as fh:
            job: Job = pickle.load(fh)
        plan = restore_token(job.plan)
        join_process_group(backend)
        from .progress import Emitter

        if rank == 0:
            writer = EventWriter(os.path.join(workdir, EVENTS_NAME))
        emitter = Emitter([writer] if writer else [])
        attempt = _Attempt(job.attempt, rank, backend)
        if rank == 0:  # the parent learns the moment the output is in place (a later cancel cannot undo it)
            attempt.published = _telling_parent(attempt.published, workdir)
        result = _attempt(plan, emitter, attempt, list(job.steps), {})
        if rank == 0:
            write_private(os.path.join(workdir, RESULT_NAME + ".tmp"), pickle.dumps(result))
            os.rename(os.path.join(workdir, RESULT_NAME + ".tmp"), os.path.join(workdir, RESULT_NAME))
        return 0
    except BaseException as exc:
        report = error_report(exc, rank, attempt, getattr(plan, "token", None))
        try:
            write_private(os.path.join(workdir, f"error-{rank}.json"), json.dumps(report).encode())
        except OSError:
            pass
        if report["kind"] == "internal":
            import traceback

            from .secrets import redact

            print(redact("".join(traceback.format_exception(exc)), getattr(plan, "token", None)), file=sys.stderr)
        return 130 if report["kind"] in ("interrupted", "cancelled") else 1
    finally:
        if writer is not None:
            writer.close()
        from .ranks import is_distributed

        if is_distributed():
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(main())
