r"""Where the AWQ phase's time goes, by kind of work: GEMMs, other kernels, and time no kernel runs.

bench/awq_speed.py measures wall time; this runs one variant (``stock`` or ``fast``) of one case
under ``torch.profiler`` and sorts the time of every GPU kernel (or, on a CPU, every operator's own
time) into categories: matrix products, softmax, reductions, elementwise work, copies and the rest.
On a GPU, the AWQ phase's wall time minus the kernels' summed time is time the GPU waited for the
host (Python, launches, synchronisations): the part a leaner search can still remove. The GEMM
share is the part an exact search cannot: every grid point's forward pass over every calibration
token is the quantity AWQ's loss is defined by.

Only the oneshot call is profiled (not the model's load). The profiler adds its own overhead to
the wall time (not to the kernels' times), so the wall time here is larger than bench/awq_speed.py's. Usage (results: ``RESULTS_DIR/awq_profile_<case>.json``
and a markdown table printed last)::

    python3 bench/awq_profile.py --case llama8b-gpu --layers 8 --gguf /root/m/smollm2.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import awq_speed  # noqa: E402  (bench/ on the path)

#: substrings of kernel or operator names, lower-cased, checked in this order
CATEGORIES = (
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::bmm", "aten::addmm", "aten::linear",
              "aten::matmul", "aten::baddbmm", "mkl", "sgemm")),
    ("softmax", ("softmax",)),
    ("copy", ("memcpy", "memset", "aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone",
              "catarraybatchedcopy", "aten::cat")),
    ("reduction", ("reduce", "aten::sum", "aten::amax", "aten::amin", "aten::mean", "aten::max", "aten::min")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "aten::", "triton")),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, needles in CATEGORIES:
        if any(n in lowered for n in needles):
            return label
    return "other"


def profile_run(variant: str, args, folder: str, tokenizer, calib) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities)
    run = awq_speed.run_variant(variant, args, folder, tokenizer, calib, None, around=prof)  # the oneshot call only
    by_category: dict[str, float] = {}
    top = []
    for item in prof.key_averages():
        if cuda:
            seconds = item.self_device_time_total / 1e6
            if seconds <= 0 or item.device_type != torch.autograd.DeviceType.CUDA:
                continue
        else:
            seconds = item.self_cpu_time_total / 1e6
            if seconds <= 0 or not item.key.startswith("aten::"):
                continue
        by_category[category(item.key)] = by_category.get(category(item.key), 0.0) + seconds
        top.append((seconds, item.key[:300]))
    top.sort(reverse=True)
    busy = sum(by_category.values())
    return {
        "variant": variant,
        "awq_s_under_profiler": run["awq_s"],
        "smoothing_s_under_profiler": run["smoothing_s"],
        "kernel_s" if cuda else "operator_s": busy,
        "by_category_s": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "top": [{"seconds": s, "name": n} for s, n in top[:25]],
    }


def markdown(result: dict) -> str:
    cuda = result["device"] == "cuda"
    unit = "GPU kernel time" if cuda else "operator self time"
    rows = [f"### {result['case']} ({result['device_name']}; {result['samples']} x {result['seq_len']}, batch "
            f"{result['batch_size']}{', ' + str(result['layers']) + ' layers' if result.get('layers') else ''}; "
            f"{result['date']})", "", f"| {unit} (s) | " + " | ".join(r["variant"] for r in result["runs"]) + " |",
            "| --- |" + " --- |" * len(result["runs"])]
    labels = [c for c, _ in CATEGORIES] + ["other"]
    for label in labels:
        rows.append(f"| {label} | " + " | ".join(f"{r['by_category_s'].get(label, 0.0):.2f}" for r in result["runs"]) + " |")
    key = "kernel_s" if cuda else "operator_s"
    rows.append("| **sum** | " + " | ".join(f"**{r[key]:.2f}**" for r in result["runs"]) + " |")
    rows.append("| AWQ phase, wall, under the profiler | " + " | ".join(f"{r['awq_s_under_profiler']:.2f}" for r in result["runs"]) + " |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="AWQ phase time by kind of work, under torch.profiler")
    awq_speed.add_case_options(parser)
    parser.add_argument("--variants", default="stock,fast")
    args = parser.parse_args(argv)
    awq_speed.fill_case_defaults(args)
    args.save = False

    import torch

    from qwodel_nb.engine.logs import library_bars_silenced, route_library_logs

    folder, tokenizer, calib = awq_speed.case_inputs(args)
    route_library_logs("WARNING")
    with library_bars_silenced():
        awq_speed.run_variant("fast", args, folder, tokenizer, calib, None)  # warm-up: kernels, caches, imports
        runs = [profile_run(v, args, folder, tokenizer, calib) for v in args.variants.split(",")]
    result = {
        "case": args.case, "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "samples": args.samples, "seq_len": args.seq_len, "batch_size": calib.batch_size,
        "layers": args.layers if args.case == "llama8b-gpu" else None, "date": time.strftime("%Y-%m-%d"),
        "command": "python3 bench/awq_profile.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "runs": runs,
    }
    with open(os.path.join(args.results_dir, f"awq_profile_{args.case}.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    print(markdown(result), flush=True)
    return result


if __name__ == "__main__":
    main()
