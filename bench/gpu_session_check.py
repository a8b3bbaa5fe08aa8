"""Session on one GPU: NVML probe, plan estimates against measured peak memory, run with evaluation.

Checks on a real GPU what the CPU tests cannot: ``Session.vram()`` reads NVML without creating a
CUDA context, the plan's placement and peak-memory estimate against ``torch.cuda`` figures, and a
full ``run(evaluate=True)`` of SmolLM2-135M on the GPU (events, statistics, perplexity before and
after, per-layer output error). Writes ``session_check.json`` and ``gpu_overview.png`` to ``--out``.

The commands that ran it on the H200 (after the first of the two runs in shared/device/README.md,
which installs the wheels into /root/site and copies ``.model/a``), carrying ``.model/b`` and
``.data`` (the calibration and held-out texts of bench/GPU_CHECK.md)::

    cat /root/m/smollm2.part1 .model/b/smollm2.part2 > /root/m/smollm2.gguf \\
      && export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 \\
      && python3 bench/gpu_session_check.py --gguf /root/m/smollm2.gguf --out $OUT
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--workdir", default="/root/qwodel-session")
    parser.add_argument("--calibration", default=".data/calibration.txt")
    parser.add_argument("--heldout", default=".data/heldout.txt")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()

    import torch

    from qwodel_nb import Session
    from qwodel_nb.engine.offline_models import gguf_to_folder

    model = gguf_to_folder(args.gguf, os.path.join(args.workdir, "SmolLM2-135M-Instruct"))
    heldout = open(args.heldout, encoding="utf-8").read().split("\n\n")
    s = Session(model=model, output=os.path.join(args.workdir, "out"), overwrite=True,
                calibration_dataset=args.calibration, num_samples=16, seq_len=512)
    vram = s.vram()
    context_after_vram = torch.cuda.is_initialized()
    plan = s.plan()
    context_after_plan = torch.cuda.is_initialized()
    print(vram, "\n", plan, sep="")
    print(f"CUDA context created by vram(): {context_after_vram}; by plan(): {context_after_plan}")

    counts: collections.Counter = collections.Counter()
    started = time.perf_counter()
    result = s.run(callbacks=[lambda e: counts.update([type(e).__name__])], progress=False,
                   evaluate=True, eval_text=heldout)
    wall = time.perf_counter() - started
    print(result)
    figure = s.plot()
    figure.savefig(os.path.join(args.out, "gpu_overview.png"), dpi=90)

    report = {
        "gpus": [g.__dict__ for g in vram.report.gpus],
        "headroom_bytes": vram.headroom_bytes,
        "cuda_context_after_vram": context_after_vram,
        "cuda_context_after_plan": context_after_plan,
        "plan": plan.as_dict(),
        "estimated_peak_gpu_bytes": plan.est_peak_gpu_bytes,
        "measured_peak_gpu_bytes": result.peak_gpu_bytes,
        "timings": result.timings,
        "wall_s": wall,
        "events": dict(counts),
        "stats": result.stats.overview(),
        "perplexity": result.perplexity,
        "layer_errors": result.layer_errors,
        "sizes": [result.size_before_bytes, result.size_after_bytes],
    }
    with open(os.path.join(args.out, "session_check.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    gib = 1024**2
    print(f"\nestimate {plan.est_peak_gpu_bytes / gib:.1f} MiB, measured {result.peak_gpu_bytes / gib:.1f} MiB; "
          f"AWQ {result.timings['awq_s']:.1f} s, run with evaluation {wall:.1f} s; events {dict(counts)}; "
          f"perplexity {result.perplexity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
