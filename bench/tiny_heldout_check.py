"""The tiny demo model on more held-out text: stock AWQ against qwodel's clipping search.

bench/awq_quality.py's tiny-cpu case scores 40 generated paragraphs; where two rows differ by
0.01% that could be the text. This runs both at 64 x 128 calibration tokens (batch 8) and scores
each on 400 generated paragraphs per seed, in windows of the model's 128-token training context
(up to 32,768 tokens), for three seeds, printing one line per run (bench/RESULTS.md)::

    python3 bench/tiny_heldout_check.py --workdir /tmp/qt
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import awq_speed  # noqa: E402  (bench/ on the path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/qwodel-bench")
    parser.add_argument("--seeds", default="22,23,24")
    cli = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from qwodel_nb.engine.demo import generate_text

    args = argparse.Namespace(case="tiny-cpu", device="cpu", samples=64, seq_len=128, batch_size=8, save=False,
                              layers=32)
    folder = awq_speed.model_folder(args, cli.workdir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    calibration = awq_speed.calibration(args, folder, tokenizer)
    out = {}
    for seed in (int(s) for s in cli.seeds.split(",")):
        texts = generate_text(400, seed=seed)
        for name, variant, clip in (("stock", "stock", "none"), ("search", "fast", "search")):
            out[f"{seed}-{name}"] = awq_speed.run_variant(variant, args, folder, tokenizer, calibration, texts,
                                                          clip=clip)["perplexity"]
            print(seed, name, out[f"{seed}-{name}"], flush=True)
    return out


if __name__ == "__main__":
    main()
