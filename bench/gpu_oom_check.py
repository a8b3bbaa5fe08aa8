r"""Out of GPU memory on a real GPU: back-off, the exhausted message, memory given back, interruption.

The process's share of the GPU is capped with ``torch.cuda.set_per_process_memory_fraction``, so
CUDA's caching allocator raises a real ``torch.OutOfMemoryError`` once a run needs more; nothing
is simulated. On SmolLM2-135M-Instruct (``--gguf``, converted once to a Hugging Face folder by
``qwodel_nb.engine.offline_models.gguf_to_folder``) and generated English text:

A. back-off: a Session asked for batch_size 16, seq_len 1024, num_samples 32, under a cap of
   1536 MiB, then (if that run needed no back-off, or nothing fitted) under caps halfway towards
   what fitted or did not, until the first attempt runs out of memory and a later one finishes.
   Recorded per cap: the back-off steps (events and summary), the settings the run finished with,
   the measured peak, the output folder complete.
B. exhausted: a cap too small for anything (8 MiB): the run steps through every setting and stops
   with ``GpuOutOfMemoryError``; recorded: the message (it must name the smallest settings tried),
   ``torch.cuda.memory_allocated()`` afterwards (must be back at its value before the run), no
   output and no staging folder left.
C. interruption: no cap; ``Session.cancel()`` from a progress callback in the middle of the second
   layer, then the GPU memory held afterwards (must be back at the value before), and the same
   Session run again to the end.

Writes ``oom_check.json`` and ``oom_check.md`` (the table printed last) to ``--out``.

On the H200, after the first of the two runs of shared/device/README.md (wheels installed into
/root/site, ``.model/a`` copied to /root/m), carrying ``.model/b``::

    set -o pipefail; cat /root/m/smollm2.part1 .model/b/smollm2.part2 > /root/m/smollm2.gguf \
      && echo "$(cat .model/b/smollm2.sha256)  /root/m/smollm2.gguf" | sha256sum -c \
      && export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 \
      && python3 bench/gpu_oom_check.py --gguf /root/m/smollm2.gguf --out $OUT 2>&1 \
         | grep -v "it/s\]" | tee $OUT/oom_check.log
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time

MIB = 1024**2


def _texts(n: int) -> list[str]:
    """Long generated English paragraphs: every sample fills 1024 tokens, so each setting matters."""
    from qwodel_nb.engine.demo import generate_text

    paragraphs = generate_text(n * 40, seed=5, sentences=(6, 10))
    return [" ".join(paragraphs[i : i + 40]) for i in range(0, n * 40, 40)]


class Cuda:
    """The GPU: a cap on this process's share of its memory, and what the allocator holds."""

    def __init__(self, torch):
        self.torch = torch
        self.name = torch.cuda.get_device_name(0)
        self.total = torch.cuda.get_device_properties(0).total_memory

    def cap(self, cap_bytes: int | None) -> None:
        fraction = 1.0 if cap_bytes is None else cap_bytes / self.total
        self.torch.cuda.set_per_process_memory_fraction(fraction, 0)

    def memory(self) -> dict:
        gc.collect()
        self.torch.cuda.synchronize()
        return {"allocated": self.torch.cuda.memory_allocated(), "reserved": self.torch.cuda.memory_reserved()}

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated()


class Rehearsal:
    """CPU stand-in for :class:`Cuda`, only to rehearse this script's own flow before GPU time is spent.

    A forward pre-hook raises ``torch.OutOfMemoryError`` when one Linear layer's input, times 64,
    exceeds the cap; "allocated" is the bytes of all live tensors. It proves nothing about GPUs.
    """

    def __init__(self, torch):
        self.torch = torch
        self.name, self.total, self.limit = "CPU rehearsal", 1 << 40, None
        torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        x = args[0] if args else None
        if (self.limit is not None and isinstance(module, self.torch.nn.Linear) and self.torch.is_tensor(x)
                and x.numel() * x.element_size() * 64 > self.limit):
            raise self.torch.OutOfMemoryError(f"CUDA out of memory (rehearsal). Tried to allocate {x.numel() * 4} bytes.")

    def cap(self, cap_bytes: int | None) -> None:
        self.limit = cap_bytes

    def allocated(self) -> int:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(o.numel() * o.element_size() for o in gc.get_objects()
                       if isinstance(o, self.torch.Tensor) and not o.is_meta)

    def memory(self) -> dict:
        gc.collect()
        return {"allocated": self.allocated(), "reserved": 0}


def _leftovers(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".qwodel")) if os.path.isdir(folder) else []


def scenario_backoff(gpu, model: str, work: str, texts: list[str], first_cap_mib: int, sizes: dict,
                     max_tries: int = 6) -> dict:
    """Search the cap (geometric bisection) until a run backs off and finishes; every try recorded."""
    from qwodel_nb import GpuOutOfMemoryError, Session
    from qwodel_nb.engine import progress as ev

    tries = []
    loose, tight = 64 * 1024, 16  # MiB: a cap that surely fits everything, one that surely fits nothing
    cap = first_cap_mib
    for _ in range(max_tries):
        out = os.path.join(work, f"backoff-{cap}")
        shutil.rmtree(out, ignore_errors=True)
        events: list = []
        s = Session(model=model, output=out, calibration_dataset=texts, **sizes)
        before = gpu.memory()
        gpu.cap(cap * MIB)
        started = time.perf_counter()
        record = {"cap_mib": cap, "memory_before": before}
        try:
            result = s.run(callbacks=[events.append], progress=False)
            record.update(finished=True, steps=result.backoff, attempts=result.summary["attempts"],
                          final=dict(result.calibration, placement=result.summary["plan"]["placement"]),
                          peak_gpu_bytes=result.peak_gpu_bytes, output_files=sorted(os.listdir(out)))
        except GpuOutOfMemoryError as exc:
            record.update(finished=False, message=exc.message)
        finally:
            gpu.cap(None)
        record.update(wall_s=round(time.perf_counter() - started, 1), memory_after=gpu.memory(),
                      retry_events=[e.message for e in events if isinstance(e, ev.OutOfMemoryRetry)],
                      leftovers=_leftovers(work))
        print(json.dumps({k: v for k, v in record.items() if k != "output_files"}, default=str), flush=True)
        tries.append(record)
        if record["finished"] and record["steps"]:
            break  # the first attempt failed and a later one finished: the proof
        if record["finished"]:
            loose = cap  # nothing ran out of memory: a smaller cap next
        else:
            tight = cap  # nothing fitted: a larger cap next
        cap = int((loose * tight) ** 0.5)
        if cap in (loose, tight):
            break
    return {"tries": tries}


def scenario_exhausted(gpu, model: str, work: str, texts: list[str], cap_mib: int, sizes: dict) -> dict:
    from qwodel_nb import GpuOutOfMemoryError, Session
    from qwodel_nb.engine import progress as ev
    from qwodel_nb.engine.backoff import MIN_NUM_SAMPLES, MIN_SEQ_LEN

    out = os.path.join(work, "exhausted")
    shutil.rmtree(out, ignore_errors=True)
    events: list = []
    s = Session(model=model, output=out, calibration_dataset=texts, **sizes)
    before = gpu.memory()
    gpu.cap(cap_mib * MIB)
    started = time.perf_counter()
    try:
        s.run(callbacks=[events.append], progress=False)
        message, raised = None, False
    except GpuOutOfMemoryError as exc:
        message, raised = exc.message, True
    finally:
        gpu.cap(None)
    after = gpu.memory()
    record = {
        "cap_mib": cap_mib, "raised_gpu_out_of_memory": raised, "message": message,
        "names_smallest_settings": bool(message) and f"batch_size=1, seq_len={MIN_SEQ_LEN}, num_samples={MIN_NUM_SAMPLES}" in message,
        "retry_events": [e.message for e in events if isinstance(e, ev.OutOfMemoryRetry)],
        "memory_before": before, "memory_after": after,
        "memory_released": after["allocated"] <= before["allocated"],
        "output_exists": os.path.exists(out), "leftovers": _leftovers(work), "session_state": s.state,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(record, default=str), flush=True)
    return record


def scenario_interrupt(gpu, model: str, work: str, texts: list[str], sizes: dict) -> dict:
    from qwodel_nb import CancelledError, Session
    from qwodel_nb.engine import progress as ev

    out = os.path.join(work, "interrupt")
    shutil.rmtree(out, ignore_errors=True)
    s = Session(model=model, output=out, calibration_dataset=texts, batch_size=4, seq_len=sizes["seq_len"] // 2,
                num_samples=sizes["num_samples"] // 2)
    during: dict = {}

    def cancel_in_layer_two(event) -> None:
        if isinstance(event, ev.GridPoint) and event.layer == 1 and not during:
            during.update(allocated=gpu.allocated())
            s.cancel()

    before = gpu.memory()
    try:
        s.run(callbacks=[cancel_in_layer_two], progress=False)
        cancelled = False
    except CancelledError:
        cancelled = True
    after = gpu.memory()
    record = {"cancelled": cancelled, "state": s.state, "memory_before": before, "memory_during": during,
              "memory_after": after, "memory_released": after["allocated"] <= before["allocated"],
              "output_exists": os.path.exists(out), "leftovers": _leftovers(work)}
    result = s.run(progress=False)
    record.update(rerun_state=s.state, rerun_output_complete=os.path.isfile(os.path.join(out, "qwodel_summary.json")),
                  rerun_peak_gpu_bytes=result.peak_gpu_bytes, memory_after_rerun=gpu.memory())
    print(json.dumps(record, default=str), flush=True)
    return record


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / MIB:.0f} MiB"


def _table(report: dict) -> str:
    a = report["backoff"]["tries"]
    proof = next((t for t in a if t["finished"] and t["steps"]), None)
    b, c = report["exhausted"], report["interrupt"]
    rows = [("fault", "what happened", "result")]
    for t in a:
        what = (f"cap {t['cap_mib']} MiB: " + ("; ".join(f"{s['setting']} {s['old']}->{s['new']}" for s in t.get("steps", []))
                                              or "no back-off needed")
                + (f"; finished with batch {t['final']['batch_size']}, seq {t['final']['seq_len']}, "
                   f"{t['final']['samples']} samples, peak {_mib(t['peak_gpu_bytes'])}" if t["finished"] else
                   f"; stopped: {t.get('message', '')[:120]}"))
        rows.append(("first attempt out of memory", what, "PASS" if t is proof else "(calibrating the cap)"))
    if proof is None:
        rows.append(("first attempt out of memory", "no cap made the first attempt fail and a later one finish", "FAIL"))
    rows.append(("nothing fits", f"cap {b['cap_mib']} MiB: {len(b['retry_events'])} back-off steps, then: "
                 f"{(b['message'] or '')[:160]}", "PASS" if b["raised_gpu_out_of_memory"] and b["names_smallest_settings"]
                 and not b["output_exists"] and not b["leftovers"] else "FAIL"))
    rows.append(("memory after the failed run", f"allocated {b['memory_before']['allocated']} -> {b['memory_after']['allocated']} "
                 f"bytes, reserved {b['memory_after']['reserved']}", "PASS" if b["memory_released"] else "FAIL"))
    rows.append(("cancel in layer 2", f"allocated during {_mib(c['memory_during'].get('allocated'))}, after "
                 f"{c['memory_after']['allocated'] / MIB:.1f} MiB (before {c['memory_before']['allocated'] / MIB:.1f}); "
                 f"state {c['state']}; then re-run: {c['rerun_state']}",
                 "PASS" if c["cancelled"] and c["memory_released"] and not c["output_exists"] and not c["leftovers"]
                 and c["rerun_output_complete"] else "FAIL"))
    return "\n".join(f"| {' | '.join(r)} |" + ("\n| --- | --- | --- |" if i == 0 else "") for i, r in enumerate(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF file (see shared/device/README.md)")
    parser.add_argument("--model", help="a Hugging Face model folder instead of --gguf")
    parser.add_argument("--workdir", default="/root/qwodel-oom")
    parser.add_argument("--out", default=".")
    parser.add_argument("--cap-mib", type=int, default=1536,
                        help="first cap for scenario A; then halfway (geometric) towards what fitted or did not")
    parser.add_argument("--exhausted-cap-mib", type=int, default=8)
    parser.add_argument("--sizes", default="16,1024,32", help="batch_size,seq_len,num_samples asked for in A and B")
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="rehearse this script's flow on a CPU with a simulated cap (proves nothing about GPUs)")
    args = parser.parse_args()

    import torch

    if args.cpu_rehearsal:
        gpu = Rehearsal(torch)
    elif torch.cuda.is_available():
        gpu = Cuda(torch)
    else:
        print("gpu_oom_check: needs a CUDA GPU (or --cpu-rehearsal)", file=sys.stderr)
        return 2
    from qwodel_nb.engine.offline_models import gguf_to_folder
    from qwodel_nb.engine.versions import library_versions

    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    model = args.model or gguf_to_folder(args.gguf, os.path.join(args.workdir, "SmolLM2-135M-Instruct"))
    batch, seq, samples = (int(v) for v in args.sizes.split(","))
    sizes = {"batch_size": batch, "seq_len": seq, "num_samples": samples}
    texts = _texts(samples + 16)
    report = {
        "gpu": gpu.name,
        "total_bytes": gpu.total,
        "versions": library_versions(),
        "sizes": sizes,
        "backoff": scenario_backoff(gpu, model, args.workdir, texts, args.cap_mib, sizes),
        "exhausted": scenario_exhausted(gpu, model, args.workdir, texts, args.exhausted_cap_mib, sizes),
        "interrupt": scenario_interrupt(gpu, model, args.workdir, texts, sizes),
    }
    with open(os.path.join(args.out, "oom_check.json"), "w") as fh:  # first: the data survive a bug below
        json.dump(report, fh, indent=2, default=str)
    table = _table(report)
    report["table"] = table
    with open(os.path.join(args.out, "oom_check.json"), "w") as fh:
        json.dump(report, fh, indent=2, default=str)
    with open(os.path.join(args.out, "oom_check.md"), "w") as fh:
        fh.write(f"# Out of GPU memory on {report['gpu']}\n\n{table}\n")
    print("\n" + table)
    return 0 if "FAIL" not in table else 1


if __name__ == "__main__":
    sys.exit(main())
