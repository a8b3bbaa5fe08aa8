r"""Quality of 4-bit AWQ on held-out text: stock llm-compressor against qwodel, with and without clipping.

For one model and each calibration size (``--sizes``, samples of ``--seq-len`` tokens from
bench/corpus.py; all rows of a size use the same token ids), one process runs:

* ``unquantized``: the model as loaded (bf16 on a GPU, float32 on a CPU);
* ``rtn``: round-to-nearest W4A16 (llm-compressor's QuantizationModifier alone, data-free);
* ``stock-awq``: llm-compressor 0.14's AWQModifier + W4A16 (its loss recorder only);
* ``fast``: qwodel's search, no clipping;
* ``fast+observer``: with llm-compressor's memoryless MSE weight observer;
* ``fast+search``: with qwodel's output-aware clipping search.

Group size 64, asymmetric, lm_head kept, batch size ``--batch-size``. Each row: held-out perplexity
(512-token windows over bench/corpus.py's held-out text; for the tiny models, windows of their
128-token training context; 32,768 tokens at most either way), AWQ-phase seconds, clipping seconds
(the part of the AWQ phase spent in the clipping search), and the gap to the unquantized
perplexity closed relative to stock AWQ: ``(ppl_stock - ppl_row) / (ppl_stock - ppl_unquantized)``.
Each row is also compared with stock AWQ window by window: its relative perplexity difference with a
paired bootstrap 95% interval over the held-out windows (:func:`against_stock`), so a difference the
held-out text alone could produce reads "within noise".

Usage (results: ``RESULTS_DIR/awq_quality_<case>.json`` and a markdown table printed last)::

    python3 bench/corpus.py --out .data
    python3 bench/awq_quality.py --case smollm2-gpu --sizes 16,64,128 --results-dir bench/results

Cases as in bench/awq_speed.py (``tiny-cpu``, ``tinytext-cpu``, ``smollm2-cpu``, ``smollm2-gpu``,
``gemma3-cpu``, ``gemma3-gpu``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import awq_speed  # noqa: E402  (bench/ on the path)

ROWS = ("unquantized", "rtn", "stock-awq", "fast", "fast+observer", "fast+search")


def baseline(kind: str, args, folder, tokenizer, texts) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from qwodel_nb.engine.awq import round_to_nearest
    from qwodel_nb.engine.evaluate import windows_perplexity

    cuda = args.device == "cuda"
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16 if cuda else torch.float32, device_map="cuda:0" if cuda else None
    )
    t = time.perf_counter()
    if kind == "rtn":
        round_to_nearest(model, group_size=64, symmetric=False, ignore=("lm_head",))
    seconds = time.perf_counter() - t
    windows = awq_speed.heldout_windows(args, model, tokenizer, texts)
    ppl = windows_perplexity(windows)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    awq_speed.log(f"{kind:15s} ppl {ppl:.3f}")
    return {"row": kind, "perplexity": ppl, "awq_s": seconds if kind == "rtn" else None, "clip_s": None,
            "heldout_windows": windows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="held-out perplexity of stock AWQ vs qwodel, with clipping")
    parser.add_argument("--case", choices=["tiny-cpu", "tinytext-cpu", "smollm2-cpu", "smollm2-gpu", "gemma3-cpu", "gemma3-gpu"], required=True)
    parser.add_argument("--sizes", default="16,64,128")
    parser.add_argument("--seq-len", type=int, help="tokens per sample (default: the held-out window, 128 for the tiny models, 512 otherwise)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--gguf")
    parser.add_argument("--train-steps", type=int, help="tinytext-cpu: training steps (default: awq_speed.TINYTEXT_STEPS)")
    parser.add_argument("--data", default=os.path.join(ROOT, ".data"))
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qwodel-bench"))
    parser.add_argument("--results-dir", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    defaults = awq_speed.CASES[args.case]
    args.device = defaults["device"]
    args.seq_len = args.seq_len or awq_speed.eval_window(args)
    args.batch_size = args.batch_size or defaults["batch_size"]
    args.save = False
    args.layers = 32
    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(args.results_dir, exist_ok=True)

    import torch
    from transformers import AutoTokenizer

    from qwodel_nb.engine.logs import library_bars_silenced, route_library_logs

    folder = awq_speed.model_folder(args, args.workdir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = awq_speed.heldout(args)
    rows = args.rows.split(",")
    route_library_logs("WARNING")
    table: dict = {"case": args.case, "date": time.strftime("%Y-%m-%d"),
                   "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
                   "seq_len": args.seq_len, "batch_size": args.batch_size,
                   "command": "python3 bench/awq_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "baselines": {}, "sizes": {}}
    with library_bars_silenced():
        for kind in ("unquantized", "rtn"):
            if kind in rows:
                table["baselines"][kind] = baseline(kind, args, folder, tokenizer, texts)
        for size in [int(s) for s in args.sizes.split(",")]:
            args.samples = size
            calib = awq_speed.calibration(args, folder, tokenizer)
            results = {}
            for row in rows:
                if row in ("unquantized", "rtn"):
                    continue
                variant, _, clip = row.partition("+")
                variant = "stock" if variant == "stock-awq" else "fast"
                run = awq_speed.run_variant(variant, args, folder, tokenizer, calib, texts, clip=clip or "none")
                results[row] = {"row": row, "perplexity": run["perplexity"], "heldout_windows": run["heldout_windows"], "awq_s": run["awq_s"],
                                "clip_s": (run["search"] or {}).get("clip_s"),
                                "smoothing_s": (run["search"] or {}).get("smoothing_s"), "peak_bytes": run["peak_bytes"]}
            table["sizes"][size] = results
    closed(table)
    path = os.path.join(args.results_dir, f"awq_quality_{args.case}.json")
    with open(path, "w") as fh:
        json.dump(table, fh, indent=1)
    print(markdown(table), flush=True)
    return table


#: resamples of the held-out windows for the confidence interval of a row's perplexity against stock AWQ's
BOOTSTRAP_RESAMPLES = 2000


def against_stock(row_windows: list, stock_windows: list, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """A row's perplexity relative to stock AWQ's on the same windows, with a paired bootstrap 95% interval.

    Both models read the same held-out windows, so the windows are resampled together (with
    replacement) and the relative difference ``ppl_row / ppl_stock - 1`` recomputed each time. The
    interval says how much the held-out text alone can move the difference; ``verdict`` is "better"
    or "worse" only when the whole interval is on that side of zero, else "within noise".
    """
    import numpy as np

    row = np.array([nll for nll, _ in row_windows], dtype=np.float64)
    stock = np.array([nll for nll, _ in stock_windows], dtype=np.float64)
    tokens = np.array([n for _, n in stock_windows], dtype=np.float64)
    if row.shape != stock.shape:
        raise ValueError("rows were scored on different held-out windows")
    draws = np.random.default_rng(seed).integers(0, len(row), size=(resamples, len(row)))
    rel = np.expm1((row[draws].sum(1) - stock[draws].sum(1)) / tokens[draws].sum(1))
    low, high = np.percentile(rel, [2.5, 97.5])
    point = float(np.expm1((row.sum() - stock.sum()) / tokens.sum()))
    verdict = "worse" if low > 0 else "better" if high < 0 else "within noise"
    return {"rel": point, "ci95": [float(low), float(high)], "verdict": verdict, "windows": len(row)}


def closed(table: dict) -> None:
    """Share of the stock-AWQ-to-unquantized perplexity gap each row closes, and each row against stock AWQ."""
    base = table["baselines"].get("unquantized", {}).get("perplexity")
    for results in table["sizes"].values():
        stock_row = results.get("stock-awq", {})
        stock = stock_row.get("perplexity")
        for r in results.values():
            if base is not None and stock is not None and stock != base and r["perplexity"] is not None:
                r["gap_closed"] = (stock - r["perplexity"]) / (stock - base)
            if r is not stock_row and r.get("heldout_windows") and stock_row.get("heldout_windows"):
                r["vs_stock"] = against_stock(r["heldout_windows"], stock_row["heldout_windows"])


def markdown(table: dict) -> str:
    b = table["baselines"]
    lines = [
        f"### {table['case']} ({table['device_name']}; {table['seq_len']}-token samples, batch {table['batch_size']}; {table['date']})",
        "",
        "unquantized: " + (f"{b['unquantized']['perplexity']:.3f}" if "unquantized" in b else "n/a")
        + "; round-to-nearest: " + (f"{b['rtn']['perplexity']:.3f}" if "rtn" in b else "n/a"),
        "",
        "| samples | row | perplexity | gap to unquantized closed vs stock | vs stock (95% interval) | AWQ phase (s) "
        "| of which clipping (s) | AWQ phase / fast's |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, results in table["sizes"].items():
        for r in results.values():
            gap = "" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:+.1f}%"
            clip = "" if not r.get("clip_s") else f"{r['clip_s']:.1f}"
            fast = results.get("fast", {}).get("awq_s")
            ratio = f"{r['awq_s'] / fast:.2f}" if fast and r["row"].startswith("fast") else ""
            vs = r.get("vs_stock")
            versus = "" if vs is None else (f"{100 * vs['rel']:+.2f}% ({100 * vs['ci95'][0]:+.2f}%, "
                                            f"{100 * vs['ci95'][1]:+.2f}%): {vs['verdict']}")
            lines.append(f"| {size} | {r['row']} | {r['perplexity']:.3f} | {gap} | {versus} | {r['awq_s']:.1f} | {clip} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
