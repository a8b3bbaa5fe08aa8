r"""How well a slice of the calibration tokens ranks AWQ's grid points: the measurements behind token
screening's settings (qwodel_nb/engine/awq_screening.py).

Runs qwodel's fast search on one case of bench/awq_speed.py with screening off, so every grid point
gets its exact stock loss on every token. For every mapping searched by forward passes it also
records each grid point's squared output error per calibration sample. From those it replays the
screening rule offline for several settings: screen every point on the first ``r`` samples;
confirm on all samples the ``keep`` best, every point within ``z`` standard errors of the best
(paired over the screened samples) and, with ``--tie``, every point within that share of the
best's screening loss (``z`` = 0 and no tie keep only the ``keep`` best); climb to unconfirmed
grid neighbours. Per setting: how many mappings get stock's choice, the largest excess of the
chosen point's stock loss over stock's best, the mean number of confirmed points, and the forward
work in units of one grid point over all samples (stock: 20).

With ``--low`` it also records the errors with the screening passes' matrix products in bfloat16
(qwodel_nb/engine/screening_precision.py, as the search screens on a CPU with AMX) and replays the
settings on those too, on up to every sample (the work column still counts a screened point as a
float32 one).

Usage (results: ``RESULTS_DIR/awq_screening_probe_<case>.json`` and a markdown table)::

    python3 bench/awq_screening_probe.py --case smollm2-gpu --gguf /root/m/smollm2.gguf
    python3 bench/awq_screening_probe.py --case smollm2-cpu --tie 0.02
    OMP_NUM_THREADS=2 python3 bench/awq_screening_probe.py --case smollm2-cpu --tie 0.02 --low
    python3 bench/awq_screening_probe.py --replay bench/results/h200-screening/awq_screening_probe_smollm2-gpu.json --tie 0.02

``--replay`` replays the settings on a file's stored per-sample errors instead of running AWQ.
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

#: llm-compressor's grid for duo_scaling=True and n_grid=20, the recipe's: identity, then 19 ratios
GRID = [(0.0, False)] + [(i / 18, True) for i in range(19)]
#: the settings replayed: samples screened, points always kept, standard errors allowed
ROWS = (2, 4)
KEEPS = (1, 3)
ZS = (0.0, 1.0, 2.0, 3.0)


def per_sample_errors(parent, quantized, weights, scales, batches, references, masks, device, low=None) -> list[list[float]]:
    """[grid point][sample]: each calibration sample's summed squared output error, in float32, as
    screening itself measures it (``_Passes.sample_errors`` in qwodel_nb/engine/awq_search.py);
    with ``low``, its matrix products in that dtype (qwodel_nb/engine/screening_precision.py)."""
    from qwodel_nb.engine import awq_search
    from qwodel_nb.engine.batch_arguments import rows_and_tokens

    per_point = sum(weights[layer].numel() for layer in quantized)
    passes = awq_search._Passes(parent, quantized, weights, scales, device, per_point, False,
                                cap_tokens=max(rows_and_tokens(b)[1] for b in batches))
    masks = list(masks) if masks else None
    return passes.sample_errors(list(range(scales.shape[0])), batches, references, masks, low)[0]


def replay(mappings: list[dict], grid, rows: int, keep: int, z: float, tie: float, errors: str = "per_sample") -> dict:
    """One setting replayed, screening on ``errors`` (a mapping's key: ``per_sample``, the float32
    errors, or ``per_sample_low``, recorded with ``--low``)."""
    from qwodel_nb.engine.awq_screening import first_best, survivors, unconfirmed_neighbours

    same, worst, confirmed_total = 0, 0.0, 0
    for m in mappings:
        full, per = m["losses"], m[errors]
        best = min(range(len(full)), key=lambda i: (full[i], i))
        confirmed: dict[int, float] = {}
        todo = survivors([r[:rows] for r in per], keep, z, tie)
        while todo:
            confirmed.update({i: full[i] for i in todo})
            todo = unconfirmed_neighbours(first_best(confirmed), confirmed, grid)
        chosen = first_best(confirmed)
        same += chosen == best
        worst = max(worst, (full[chosen] - full[best]) / full[best] if full[best] > 0 else 0.0)
        confirmed_total += len(confirmed)
    n = len(mappings)
    samples = len(mappings[0]["per_sample"][0]) if mappings else 0
    points = len(grid)
    return {
        "errors": "bfloat16" if errors == "per_sample_low" else "float32",
        "rows": rows, "keep": keep, "z": z, "tie": tie, "mappings": n, "same_choice": same,
        "worst_loss_excess": worst, "mean_confirmed": confirmed_total / n if n else 0.0,
        "work_points": points * rows / samples + (confirmed_total / n if n else 0.0) if samples else None,
    }


def main(argv=None) -> dict:
    import awq_speed

    parser = argparse.ArgumentParser(description="replay token screening on per-sample AWQ losses")
    awq_speed.add_case_options(parser, required=False)
    parser.add_argument("--replay", help="a file this script wrote: replay its stored errors, run nothing")
    parser.add_argument("--tie", type=float, default=0.0, help="also confirm points within this share of the best")
    parser.add_argument("--low", action="store_true",
                        help="also record the errors with the parent's matrix products in bfloat16, and replay on those")
    args = parser.parse_args(argv)
    if args.replay:
        with open(args.replay) as fh:
            stored = json.load(fh)
        table = replay_all(stored["mappings"], stored["samples"], args.tie)
        print_table(table, stored["samples"], args.tie)
        return {"replay": table}
    if not args.case:
        parser.error("--case or --replay is required")
    awq_speed.fill_case_defaults(args)
    args.save = False

    import torch

    from qwodel_nb.engine import awq_search
    from qwodel_nb.engine.logs import library_bars_silenced, route_library_logs

    folder, tokenizer, calib = awq_speed.case_inputs(args)
    texts = None if args.case == "llama8b-gpu" else awq_speed.heldout(args)

    mappings: list[dict] = []
    real = awq_search._forward_losses

    def recording(parent, quantized, weights, scales, grid, batches, references, masks, device, *rest):
        out = real(parent, quantized, weights, scales, grid, batches, references, masks, device, *rest)
        errors = per_sample_errors(parent, quantized, weights, scales, batches, references, masks, device)
        mappings.append({"losses": out[0], "per_sample": errors})
        if args.low:
            mappings[-1]["per_sample_low"] = per_sample_errors(parent, quantized, weights, scales, batches, references,
                                                               masks, device, torch.bfloat16)
        return out

    awq_search._forward_losses = recording
    route_library_logs("WARNING")
    try:
        with library_bars_silenced():
            run = awq_speed.run_variant("fast-unscreened", args, folder, tokenizer, calib, texts)
    finally:
        awq_search._forward_losses = real
    table = replay_all(mappings, args.samples, args.tie)
    result = {
        "case": args.case,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "layers": args.layers if args.case == "llama8b-gpu" else None,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python3 bench/awq_screening_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "tie": args.tie,
        "perplexity": run["perplexity"],
        "replay": table,
        "mappings": mappings,
    }
    with open(os.path.join(args.results_dir, f"awq_screening_probe_{args.case}.json"), "w") as fh:
        json.dump(result, fh)
    print_table(table, args.samples, args.tie)
    return result


def replay_all(mappings: list[dict], samples: int, tie: float) -> list[dict]:
    """Every setting, on the float32 errors and, where recorded, on the bfloat16 ones (on more samples too)."""
    table = [replay(mappings, GRID, r, k, z, tie) for r in ROWS for k in KEEPS for z in ZS]
    if mappings and "per_sample_low" in mappings[0]:
        rows = sorted({*ROWS, samples})
        table += [replay(mappings, GRID, r, k, z, tie, "per_sample_low") for r in rows for k in KEEPS for z in ZS]
    return table


def print_table(table: list[dict], samples: int, tie: float) -> None:
    print(f"| screened in | samples screened (of {samples}) | always kept | z | tie | same choice | worst loss excess | "
          "mean confirmed | work (stock: 20) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for t in table:
        print(f"| {t['errors']} | {t['rows']} | {t['keep']} | {t['z']:g} | {tie:g} | {t['same_choice']}/{t['mappings']} | "
              f"{100 * t['worst_loss_excess']:.3f}% | {t['mean_confirmed']:.2f} | {t['work_points']:.2f} |")


if __name__ == "__main__":
    main()
