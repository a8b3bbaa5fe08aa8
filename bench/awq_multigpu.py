"""One GPU against N GPUs: the same qwodel run (``execute``, product defaults) with ``gpus=1`` and ``gpus=N``.

Both runs use the same model folder, calibration text, samples, seq_len and batch size (the
batches of a one-GPU run are dealt out to the N processes, so both see the same tokens).
Written to ``RESULTS_DIR/awq_multigpu_<case>.json``: wall times (AWQ phase, end to end, from the
run's own timings and the caller's clock), per mapping the best grid index and the grid losses
of both runs, the share of mappings with the same choice, the largest relative loss difference,
the clip ratios' largest relative difference, and the perplexity of each saved model on held-out
text (``--perplexity``; not for random-weight models).

Cases (``--case``):

=============  ==============================================================  =================
case           model                                                           default
=============  ==============================================================  =================
tiny-cpu       the demo's 4-layer Llama, built here; N processes on the CPU     8 x 64, batch 1
               under gloo (the rehearsal: ``QWODEL_DISTRIBUTED_BACKEND=gloo``)
smollm2-gpu    SmolLM2-135M (``--gguf``), bf16                                  64 x 512, batch 8
llama8b-gpu    Llama-3-8B shapes, 32 layers, random bf16 weights saved once     32 x 512, batch 8
               to local disk first (so every rank loads the same weights)
=============  ==============================================================  =================

Usage::

    python3 bench/corpus.py --out .data        # once (GPU cases): calibration and held-out text
    QWODEL_DISTRIBUTED_BACKEND=gloo OMP_NUM_THREADS=1 python3 bench/awq_multigpu.py --case tiny-cpu --gpus 2
    python3 bench/awq_multigpu.py --case smollm2-gpu --gpus 2 --gguf /root/m/smollm2.gguf --perplexity
    python3 bench/awq_multigpu.py --case llama8b-gpu --gpus 2 --gguf /root/m/smollm2.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

CASES = {
    "tiny-cpu": dict(samples=8, seq_len=64, batch_size=1),
    "smollm2-gpu": dict(samples=64, seq_len=512, batch_size=8),
    "llama8b-gpu": dict(samples=32, seq_len=512, batch_size=8),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_and_texts(args) -> tuple[str, object, list[str] | None]:
    """(model folder, calibration source, held-out texts or None)."""
    if args.case == "tiny-cpu":
        from qwodel_nb.engine.demo import build_model, generate_text

        folder = build_model(os.path.join(args.workdir, "tiny"), hidden_size=192, intermediate_size=384, layers=4,
                             heads=6, kv_heads=2, train_steps=60)
        return folder, generate_text(200, seed=21), generate_text(40, seed=22)
    import awq_speed

    ns = argparse.Namespace(case=args.case, gguf=args.gguf, layers=args.layers)
    folder = awq_speed.model_folder(ns, args.workdir)  # llama8b: built on GPU 0 and saved, before any launch
    calibration = os.path.join(args.data, "bench_calibration.txt")
    heldout = [open(os.path.join(args.data, "heldout.txt"), encoding="utf-8").read()] if args.case == "smollm2-gpu" else None
    return folder, calibration, heldout


def one_run(args, folder: str, calibration, gpus: int) -> dict:
    from qwodel_nb.engine.plan import make_plan
    from qwodel_nb.engine.run import execute
    from qwodel_nb.engine.settings import make_settings

    out = os.path.join(args.workdir, f"out-{args.case}-{args.clip}-g{gpus}")
    settings = make_settings(model=folder, output=out, overwrite=True, calibration_dataset=calibration,
                             num_samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size, gpus=gpus,
                             clip=args.clip)
    started = time.perf_counter()
    plan = make_plan(settings)
    result = execute(plan)
    wall = time.perf_counter() - started
    records = result.stats.records
    log(f"gpus={gpus}: {wall:.1f} s end to end, AWQ phase {result.timings['awq_s']:.1f} s")
    return {
        "gpus": gpus,
        "output": out,
        "wall_s": wall,
        "timings": result.timings,
        "peak_gpu_bytes": result.peak_gpu_bytes,
        "calibration": result.calibration,
        "mappings": [
            {
                "smooth_layer": r.smooth_layer,
                "best_index": min(range(len(r.grid_losses)), key=lambda i: (r.grid_losses[i], i)),
                "best_ratio": r.best_ratio,
                "losses": list(r.grid_losses),
            }
            for r in records
        ],
        "clips": [{"name": c.name, "mean_ratio": c.mean_ratio} for c in result.stats.clips],
    }


def compare(a: dict, b: dict) -> dict:
    same = [x["best_index"] == y["best_index"] for x, y in zip(a["mappings"], b["mappings"])]
    rel = [abs(ly - lx) / abs(lx) for x, y in zip(a["mappings"], b["mappings"])
           for lx, ly in zip(x["losses"], y["losses"]) if lx]
    clip_rel = [abs(y["mean_ratio"] - x["mean_ratio"]) / abs(x["mean_ratio"])
                for x, y in zip(a["clips"], b["clips"]) if x["mean_ratio"]]
    # where the choices differ: how far apart the one-GPU run's own losses at the two points are
    gaps = [abs(x["losses"][y["best_index"]] - x["losses"][x["best_index"]]) / abs(x["losses"][x["best_index"]])
            for x, y in zip(a["mappings"], b["mappings"]) if x["best_index"] != y["best_index"] and x["losses"][x["best_index"]]]
    rel_sorted = sorted(rel)
    return {
        "mappings": len(same),
        "max_loss_gap_where_choices_differ": max(gaps, default=0.0),
        "median_relative_loss_difference": rel_sorted[len(rel_sorted) // 2] if rel_sorted else 0.0,
        "same_choice": sum(same),
        "same_choice_share": sum(same) / len(same) if same else None,
        "max_relative_loss_difference": max(rel, default=0.0),
        "max_relative_clip_ratio_difference": max(clip_rel, default=0.0),
        "awq_phase_ratio": a["timings"]["awq_s"] / b["timings"]["awq_s"],
        "end_to_end_ratio": a["wall_s"] / b["wall_s"],
    }


def saved_perplexity(path: str, texts: list[str]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwodel_nb.engine.evaluate import perplexity

    model = AutoModelForCausalLM.from_pretrained(path, device_map="cuda:0" if torch.cuda.is_available() else None)
    value = perplexity(model, AutoTokenizer.from_pretrained(path), texts)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="AWQ on one GPU against N GPUs (torchrun), same case")
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--gpus", type=int, default=2, help="N, the processes of the distributed run")
    parser.add_argument("--layers", type=int, default=32, help="llama8b-gpu: decoder layers kept")
    parser.add_argument("--clip", default="search", choices=["none", "observer", "search"], help="the clip setting of both runs")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--gguf", help="SmolLM2 GGUF file (smollm2-gpu; llama8b-gpu takes its tokenizer)")
    parser.add_argument("--data", default=os.path.join(ROOT, ".data"), help="folder written by bench/corpus.py")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qwodel-multigpu"))
    parser.add_argument("--results-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--perplexity", action="store_true", help="perplexity of both saved models (held-out text)")
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    args = parser.parse_args(argv)
    for key, value in CASES[args.case].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    os.makedirs(args.workdir, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.case == "tiny-cpu":
        os.environ.setdefault("QWODEL_DISTRIBUTED_BACKEND", "gloo")

    from qwodel_nb.engine.versions import library_versions

    folder, calibration, heldout = model_and_texts(args)
    log(f"model {folder}; {args.samples} x {args.seq_len} tokens, batch {args.batch_size}")
    single = one_run(args, folder, calibration, 1)
    multi = one_run(args, folder, calibration, args.gpus)
    summary = {
        "case": args.case,
        "gpus": args.gpus,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "backend": os.environ.get("QWODEL_DISTRIBUTED_BACKEND", "nccl"),
        "versions": library_versions(),
        "clip": args.clip,
        "command": "python3 bench/awq_multigpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "comparison": compare(single, multi),
        "runs": [single, multi],
    }
    if args.perplexity and heldout:
        summary["perplexity"] = {f"gpus={r['gpus']}": saved_perplexity(r["output"], heldout) for r in (single, multi)}
    if not args.keep:
        for run in (single, multi):
            shutil.rmtree(run["output"], ignore_errors=True)
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"awq_multigpu_{args.case}_clip-{args.clip}.json")
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=1)
    c = summary["comparison"]
    log(f"same choice {c['same_choice']}/{c['mappings']}, max relative loss difference "
        f"{c['max_relative_loss_difference']:.2e} (median {c['median_relative_loss_difference']:.2e}), where choices "
        f"differ the 1-GPU losses are within {c['max_loss_gap_where_choices_differ']:.2%}; AWQ phase {c['awq_phase_ratio']:.2f}x, end to end "
        f"{c['end_to_end_ratio']:.2f}x (1 GPU / {args.gpus} GPUs); {path}")
    if "perplexity" in summary:
        log(f"perplexity {summary['perplexity']}")
    return summary


if __name__ == "__main__":
    main()
