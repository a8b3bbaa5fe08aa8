r"""Calibration and held-out text for the benchmarks, from files every Debian/Python machine has.

* Calibration pool: the Python language reference topics shipped with CPython
  (``pydoc_data.topics``, PSF licence; about 465 kB of English prose with some code) followed by
  the licence texts in ``/usr/share/common-licenses`` except those used as held-out text and
  GFDL-1.2 (near-identical to GFDL-1.3). Enough for 128 windows of 512 SmolLM2 tokens.
* Held-out text: Apache-2.0 and GFDL-1.3, as in bench/GPU_CHECK.md.

The GPU machine has neither the same CPython nor ``/usr/share/common-licenses``, so the files are
written here once and carried (``.data/`` is ignored by git)::

    python3 bench/corpus.py --out .data

Calibration samples are windows of ``seq_len`` tokens cut from the tokenized pool in order, then
shuffled with a fixed seed; every benchmark row with the same (samples, seq_len) uses the same
token ids.
"""

from __future__ import annotations

import argparse
import os
import random

LICENSES = "/usr/share/common-licenses"
HELDOUT = ("Apache-2.0", "GFDL-1.3")
SKIP = ("GFDL", "GFDL-1.2", "GPL", "LGPL") + HELDOUT  # symlinks and near-duplicates of held-out text
POOL_NAME = "bench_calibration.txt"
HELDOUT_NAME = "heldout.txt"


def paragraphs(text: str) -> list[str]:
    blocks = [" ".join(b.split()) for b in text.replace("\r\n", "\n").split("\n\n")]
    return [b for b in blocks if b]


def write_files(out: str) -> tuple[str, str]:
    import pydoc_data.topics as topics

    pool = []
    for key in sorted(topics.topics):
        pool.extend(paragraphs(topics.topics[key]))
    for name in sorted(os.listdir(LICENSES)):
        path = os.path.join(LICENSES, name)
        if name in SKIP or os.path.islink(path):
            continue
        pool.extend(paragraphs(open(path, encoding="utf-8", errors="replace").read()))
    held = []
    for name in HELDOUT:
        held.extend(paragraphs(open(os.path.join(LICENSES, name), encoding="utf-8").read()))
    os.makedirs(out, exist_ok=True)
    pool_path, held_path = os.path.join(out, POOL_NAME), os.path.join(out, HELDOUT_NAME)
    with open(pool_path, "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(pool) + "\n")
    with open(held_path, "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(held) + "\n")
    return pool_path, held_path


def calibration_windows(pool_path: str, tokenizer, num_samples: int, seq_len: int, seed: int = 0) -> list[list[int]]:
    """``num_samples`` windows of exactly ``seq_len`` tokens from the pool (fixed seed)."""
    text = open(pool_path, encoding="utf-8").read()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if len(windows) < num_samples:
        raise SystemExit(f"the pool holds {len(windows)} windows of {seq_len} tokens; {num_samples} asked")
    random.Random(seed).shuffle(windows)
    return windows[:num_samples]


def heldout_texts(path: str) -> list[str]:
    return [open(path, encoding="utf-8").read()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".data")
    args = parser.parse_args()
    pool, held = write_files(args.out)
    print(pool, os.path.getsize(pool), "bytes;", held, os.path.getsize(held), "bytes")


if __name__ == "__main__":
    main()
