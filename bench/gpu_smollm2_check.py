r"""SmolLM2-135M on one GPU: qwodel's CLI against llm-compressor called directly.

What it measures, on the machine it runs on (written for one H200):

1. Converts the GGUF file of SmolLM2-135M-Instruct (``--gguf-dir``/``--gguf-file``) into a plain
   Hugging Face folder (``--hf-dir``: bf16 safetensors + tokenizer), unless that folder exists.
2. Quantizes it to W4A16 with AWQ ``--repeats`` times each way (default 2), alternating the order
   (CLI, direct, direct, CLI, ...):
   - through qwodel's CLI, as a subprocess:
     ``python3 -m qwodel_nb quantize HF_DIR --backend awq --format int4 --output CLI_OUT
     --calibration-dataset CAL.txt --num-samples 16 --seq-len 512 --batch-size 1 --overwrite``;
     wall time from outside, the AWQ-phase time, peak GPU bytes and group size from its
     ``qwodel_summary.json``;
   - through llm-compressor directly, in a fresh subprocess of this script that imports no
     qwodel code (``direct-worker``): the same 16 calibration samples (blank-line paragraphs of
     the file, shuffled with ``random.Random(0)``, at most 512 tokens each, built independently
     here and checked token for token against qwodel's own tokenization), the model loaded in
     bf16 with ``device_map="cuda:0"`` as qwodel loads a model that fits, then
     ``oneshot(model, processor=tok, dataset=<tokenized Dataset>, recipe=[AWQModifier(),
     QuantizationModifier(W4A16_ASYM, group_size 64, ignore=["lm_head"])], batch_size=1,
     max_seq_length=512, num_calibration_samples=16)``; the oneshot call timed,
     ``torch.cuda.max_memory_allocated`` over load + calibration (the same span qwodel reports),
     and the compressed model saved like qwodel saves it.
3. Perplexity on the held-out text (``--heldout``, 512-token windows,
   ``qwodel_nb.engine.evaluate.perplexity``) of the bf16 model, of round-to-nearest W4A16
   (``qwodel_nb.engine.awq.round_to_nearest``, group 64, asymmetric, lm_head kept), of the CLI's
   output reloaded with ``AutoModelForCausalLM.from_pretrained`` and of the direct output
   reloaded the same way.

Prints a short table last and writes everything to ``RESULTS_DIR/results.json`` (``$OUT`` on the
device machine), with the subprocesses' output beside it (``cli.log``, ``direct.log``).

The commands that ran it on the H200 (bench/GPU_CHECK.md has the results): the first of the two
runs of shared/device/README.md, carrying ``.whl`` and ``.model/a``, had installed the wheels into
/root/site and copied ``.model/a/smollm2.part1`` into /root/m; then, in the repository root,
carrying ``.model/b`` and ``.data``::

    set -o pipefail; cat /root/m/smollm2.part1 .model/b/smollm2.part2 > /root/m/smollm2.gguf \
      && echo "$(cat .model/b/smollm2.sha256)  /root/m/smollm2.gguf" | sha256sum -c \
      && export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 \
      && python3 bench/gpu_smollm2_check.py --results-dir $OUT 2>&1 | tee $OUT/main.log

and right after it, on the same warm machine (the converted folder reused), carrying ``.data``::

    set -o pipefail; export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 \
      && python3 bench/gpu_smollm2_check.py --repeats 4 --results-dir $OUT 2>&1 \
      | grep -v "it/s\]" | tee $OUT/main.log

The calibration and held-out files (``.data/``, not committed) are English prose: GPL-3
(calibration, one sample per paragraph) and Apache-2.0 + GFDL-1.3 (held-out), from
``/usr/share/common-licenses``; see bench/GPU_CHECK.md.

On a machine without a GPU the same script runs end to end in float32 (as qwodel computes on a
CPU), which is how it was checked before the GPU run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GiB = 1024**3


# ----------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run_logged(cmd: list[str], log: str, title: str) -> tuple[int, str]:
    """Run ``cmd`` in the repository root; append its output under ``title`` to ``log``.

    Returns (exit status, last lines of its output). One log per kind keeps ``$OUT`` within the
    device tool's 8-file limit whatever the number of repeats.
    """
    import tempfile

    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as tmp:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=tmp, stderr=subprocess.STDOUT).returncode
        tmp.seek(0)
        text = tmp.read()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n===== {title} (exit status {rc})\n{text}")
    return rc, "".join(text.splitlines(keepends=True)[-80:])


def _code_digest() -> str:
    """sha256 over qwodel_nb's sources, to tie the numbers to the code that ran."""
    h = hashlib.sha256()
    base = os.path.join(ROOT, "qwodel_nb")
    for dirpath, dirnames, filenames in sorted(os.walk(base)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, ROOT).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


def calibration_ids(path: str, tokenizer, num_samples: int, seq_len: int) -> list[list[int]]:
    """The calibration samples, built without qwodel: paragraphs, seed-0 shuffle, first N, truncated."""
    with open(path, encoding="utf-8") as fh:
        blocks = [b.strip() for b in fh.read().replace("\r\n", "\n").split("\n\n")]
    rows = [b for b in blocks if b]
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    samples = []
    for i in order[:num_samples]:
        ids = tokenizer(rows[i][: seq_len * 16], truncation=False)["input_ids"][:seq_len]
        if ids:
            samples.append(list(ids))
    return samples


# ----------------------------------------------------------------------------- the direct run (subprocess)


def direct_worker(args: argparse.Namespace) -> None:
    """llm-compressor alone: no qwodel import anywhere in this process."""
    started = time.perf_counter()
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    timings = {"import_s": time.perf_counter() - started}
    cuda = torch.cuda.is_available()
    if not cuda:
        # CPU dry run only: llm-compressor 0.14 pins cached activations, which needs an accelerator
        # (qwodel applies the same no-op patch on CPU; on a GPU nothing is patched).
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    ids = calibration_ids(args.calibration, tok, args.num_samples, args.seq_len)
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    timings["calibration_data_s"] = time.perf_counter() - t

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    # As qwodel loads a model that fits on the GPU: stored dtype (bf16), whole model on cuda:0.
    # On a CPU qwodel computes in float32, and so does this dry run.
    model = AutoModelForCausalLM.from_pretrained(
        args.hf_dir,
        dtype=torch.bfloat16 if cuda else torch.float32,
        **({"device_map": "cuda:0"} if cuda else {}),
    )
    timings["load_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    scheme = preset_name_to_scheme("W4A16_ASYM", ["Linear"])
    scheme.weights.group_size = args.group_size
    recipe = [AWQModifier(), QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    t_oneshot = time.perf_counter()
    oneshot(
        model=model,
        processor=tok,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(ids),
        max_seq_length=args.seq_len,
        batch_size=1,
        shuffle_calibration_samples=False,
    )
    if cuda:
        torch.cuda.synchronize()
    timings["oneshot_s"] = time.perf_counter() - t_oneshot
    timings["recipe_and_oneshot_s"] = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else None
    peak_reserved = torch.cuda.max_memory_reserved() if cuda else None
    if not cuda:
        model.to(torch.bfloat16)  # saved as stored, like qwodel does after a float32 CPU run

    t = time.perf_counter()
    shutil.rmtree(args.direct_out, ignore_errors=True)
    model.save_pretrained(args.direct_out, save_compressed=True)
    tok.save_pretrained(args.direct_out)
    timings["save_s"] = time.perf_counter() - t
    timings["total_in_process_s"] = time.perf_counter() - started

    result = {
        "timings": timings,
        "peak_gpu_bytes": peak,
        "peak_gpu_reserved_bytes": peak_reserved,
        "samples": len(ids),
        "tokens": sum(len(x) for x in ids),
        "token_ids": ids,
    }
    with open(args.worker_result, "w") as fh:
        json.dump(result, fh)


# ----------------------------------------------------------------------------- the steps of the main process


def convert_gguf(args: argparse.Namespace) -> dict:
    from qwodel_nb.engine.offline_models import gguf_to_folder

    if os.path.isfile(os.path.join(args.hf_dir, "config.json")) and not args.reconvert:
        _log(f"reusing {args.hf_dir}")
        return {"converted": False}
    shutil.rmtree(args.hf_dir, ignore_errors=True)
    t = time.perf_counter()
    gguf_to_folder(os.path.join(args.gguf_dir, args.gguf_file), args.hf_dir)
    seconds = time.perf_counter() - t
    _log(f"converted GGUF -> {args.hf_dir} in {seconds:.1f} s")
    return {"converted": True, "seconds": seconds}


def warm_imports() -> float:
    """Compile and cache the libraries' bytecode once, so the first timed run does not pay for it."""
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torch, transformers, datasets, llmcompressor, compressed_tensors, qwodel_nb.engine.run"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def run_cli(args: argparse.Namespace, index: int) -> dict:
    cmd = [
        sys.executable, "-m", "qwodel_nb", "quantize", args.hf_dir,
        "--backend", "awq", "--format", "int4", "--output", args.cli_out,
        "--calibration-dataset", args.calibration,
        "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
        "--batch-size", "1", "--overwrite",
    ]  # fmt: skip
    log = os.path.join(args.results_dir, "cli.log")
    _log("CLI: " + " ".join(cmd[1:]))
    t = time.perf_counter()
    rc, tail = _run_logged(cmd, log, f"CLI run {index}")
    wall = time.perf_counter() - t
    out = {"command": "python3 " + " ".join(cmd[1:]), "returncode": rc, "wall_s": wall, "log": os.path.basename(log)}
    if rc != 0:
        out["log_tail"] = tail
        _log(f"CLI run {index} FAILED (rc={rc}):\n{tail}")
        # the same command with --debug, for the traceback
        _, out["debug_log_tail"] = _run_logged(cmd[:3] + ["--debug"] + cmd[3:], log, f"CLI run {index} again with --debug")
        print(out["debug_log_tail"], flush=True)
        return out
    with open(os.path.join(args.cli_out, "qwodel_summary.json")) as fh:
        summary = json.load(fh)
    out.update(
        awq_s=summary["timings"]["awq_s"],
        timings=summary["timings"],
        peak_gpu_bytes=summary["peak_gpu_bytes"],
        group_size=summary["plan"]["group_size"],
        group_size_reason=summary["plan"]["group_size_reason"],
        placement=summary["plan"]["placement"],
        compute_dtype=summary["plan"]["compute_dtype"],
        calibration=summary["calibration"],
        sizes=summary["sizes"],
        versions=summary.get("versions"),
    )
    _log(f"CLI run {index}: wall {wall:.1f} s, AWQ phase {out['awq_s']:.1f} s, group {out['group_size']}")
    return out


def run_direct(args: argparse.Namespace, index: int) -> dict:
    result_path = os.path.join(args.results_dir, f"direct_run{index}.json.tmp")
    cmd = [
        sys.executable, os.path.abspath(__file__), "direct-worker",
        "--hf-dir", args.hf_dir, "--direct-out", args.direct_out, "--calibration", args.calibration,
        "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
        "--group-size", str(args.group_size), "--worker-result", result_path,
    ]  # fmt: skip
    log = os.path.join(args.results_dir, "direct.log")
    _log("direct llm-compressor run")
    t = time.perf_counter()
    rc, tail = _run_logged(cmd, log, f"direct run {index}")
    wall = time.perf_counter() - t
    out = {"returncode": rc, "wall_s": wall, "log": os.path.basename(log)}
    if rc != 0:
        out["log_tail"] = tail
        _log(f"direct run {index} FAILED (rc={rc}):\n{tail}")
        return out
    with open(result_path) as fh:
        out.update(json.load(fh))
    os.remove(result_path)
    _log(f"direct run {index}: wall {wall:.1f} s, oneshot {out['timings']['oneshot_s']:.1f} s")
    return out


def check_same_calibration(args: argparse.Namespace, direct_ids: list[list[int]]) -> dict:
    """qwodel's own tokenization of the same file, against the ids the direct run used."""
    from transformers import AutoTokenizer

    from qwodel_nb.engine.calibration import read_source, tokenize

    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    cal = tokenize(read_source(args.calibration), tok, seq_len=args.seq_len, num_samples=args.num_samples, batch_size=1)
    ours = sorted(tuple(s.input_ids) for s in cal.samples)
    theirs = sorted(tuple(x) for x in direct_ids)
    return {"identical": ours == theirs, "qwodel_samples": len(ours), "qwodel_tokens": sum(map(len, ours))}


def perplexities(args: argparse.Namespace, out: dict, cli_ok: bool, direct_ok: bool) -> None:
    """Fills ``out`` as it goes, so that a failure keeps the values already measured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwodel_nb.engine.awq import round_to_nearest
    from qwodel_nb.engine.evaluate import perplexity

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    placement = {"device_map": "cuda:0"} if cuda else {}
    with open(args.heldout, encoding="utf-8") as fh:
        texts = [fh.read()]
    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    ids = len(tok(texts[0], add_special_tokens=False)["input_ids"]) + 1
    out.update(heldout_tokens=ids, windows=min(-(-(ids - 1) // args.ppl_seq_len), 64), seq_len=args.ppl_seq_len)

    def ppl(model) -> float:
        return perplexity(model, tok, texts, seq_len=args.ppl_seq_len)

    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=dtype, **placement)
    out["bf16" if cuda else "float32"] = ppl(model)
    _log(f"perplexity unquantized: {out.get('bf16', out.get('float32')):.3f}")
    t = time.perf_counter()
    round_to_nearest(model, group_size=args.group_size, symmetric=False, ignore=("lm_head",))
    if cuda:
        torch.cuda.synchronize()
    out["rtn_seconds"] = time.perf_counter() - t
    out["rtn"] = ppl(model)
    _log(f"perplexity round-to-nearest: {out['rtn']:.3f} ({out['rtn_seconds']:.2f} s to quantize)")
    del model
    for key, path, ok in (("awq_cli", args.cli_out, cli_ok), ("awq_direct", args.direct_out, direct_ok)):
        if not ok:
            out[key] = None
            continue
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement)
        out[key] = ppl(model)
        out[key + "_first_linear"] = type(model.model.layers[0].self_attn.q_proj).__name__
        _log(f"perplexity {key}: {out[key]:.3f}")
        del model
        if cuda:
            torch.cuda.empty_cache()


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "qwodel_nb_sources_sha256_16": _code_digest()}
    for name in ("transformers", "llmcompressor", "compressed_tensors", "datasets"):
        try:
            env[name] = __import__(name).__version__
        except Exception as exc:  # pragma: no cover - report, don't fail
            env[name] = f"unavailable ({type(exc).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = p.name
        env["gpu_total_bytes"] = p.total_memory
        env["cuda"] = torch.version.cuda
    else:
        env["gpu"] = None
    return env


# ----------------------------------------------------------------------------- table


def _min(values):
    values = [v for v in values if v is not None]
    return min(values) if values else None


def _fmt(v, spec=".1f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(res: dict) -> str:
    cli = [r for r in res["cli_runs"] if r["returncode"] == 0]
    direct = [r for r in res["direct_runs"] if r["returncode"] == 0]
    ppl = res.get("perplexity", {})
    gib = lambda b: None if b is None else b / GiB  # noqa: E731
    rows = [
        ("runs (ok / total)", f"{len(cli)}/{len(res['cli_runs'])}", f"{len(direct)}/{len(res['direct_runs'])}"),
        ("wall time, whole process (s)", " ".join(_fmt(r["wall_s"]) for r in cli) or "n/a",
         " ".join(_fmt(r["wall_s"]) for r in direct) or "n/a"),
        ("AWQ phase (s): recipe+oneshot", " ".join(_fmt(r["awq_s"], ".2f") for r in cli) or "n/a",
         " ".join(_fmt(r["timings"]["recipe_and_oneshot_s"], ".2f") for r in direct) or "n/a"),
        ("  of which oneshot() (s)", "-", " ".join(_fmt(r["timings"]["oneshot_s"], ".2f") for r in direct) or "n/a"),
        ("load model (s)", " ".join(_fmt(r["timings"]["load_model_s"], ".2f") for r in cli) or "n/a",
         " ".join(_fmt(r["timings"]["load_model_s"], ".2f") for r in direct) or "n/a"),
        ("save (s)", " ".join(_fmt(r["timings"]["save_s"], ".2f") for r in cli) or "n/a",
         " ".join(_fmt(r["timings"]["save_s"], ".2f") for r in direct) or "n/a"),
        ("peak GPU allocated (GiB)", _fmt(gib(_min(r["peak_gpu_bytes"] for r in cli)), ".3f"),
         _fmt(gib(_min(r["peak_gpu_bytes"] for r in direct)), ".3f")),
        ("group size", str(cli[0]["group_size"]) if cli else "n/a", str(res["group_size"]) if direct else "n/a"),
        ("calibration samples / tokens",
         f"{cli[0]['calibration']['samples']} / {cli[0]['calibration']['tokens_used']}" if cli else "n/a",
         f"{direct[0]['samples']} / {direct[0]['tokens']}" if direct else "n/a"),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "qwodel CLI")])
    lines = [f"{'':<{w0}}  {'qwodel CLI':<{w1}}  llm-compressor direct"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    base = "bf16" if "bf16" in ppl else "float32"
    lines.append("")
    lines.append(f"perplexity on held-out text ({ppl.get('heldout_tokens', '?')} tokens, {ppl.get('windows', '?')} windows of {ppl.get('seq_len', '?')}):")
    for label, key in ((base, base), ("round-to-nearest W4A16 g64", "rtn"), ("AWQ W4A16 g64, qwodel CLI", "awq_cli"),
                       ("AWQ W4A16 g64, llm-compressor direct", "awq_direct")):  # fmt: skip
        lines.append(f"  {label:<38} {_fmt(ppl.get(key), '.3f')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="check", choices=["check", "direct-worker"])
    p.add_argument("--gguf-dir", default="/root/m")
    p.add_argument("--gguf-file", default="smollm2.gguf")
    p.add_argument("--hf-dir", default="/root/smollm2-hf")
    p.add_argument("--reconvert", action="store_true", help="convert the GGUF even if --hf-dir exists")
    p.add_argument("--cli-out", default="/root/out-cli")
    p.add_argument("--direct-out", default="/root/out-direct")
    p.add_argument("--calibration", default=".data/calibration.txt")
    p.add_argument("--heldout", default=".data/heldout.txt")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--ppl-seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternating CLI/direct, direct/CLI, ...")
    p.add_argument("--results-dir", default=os.environ.get("OUT") or "bench-results")
    p.add_argument("--worker-result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode == "direct-worker":
        direct_worker(args)
        return 0
    args.calibration = os.path.abspath(os.path.join(ROOT, args.calibration))
    args.heldout = os.path.abspath(os.path.join(ROOT, args.heldout))
    os.makedirs(args.results_dir, exist_ok=True)
    results_path = os.path.join(args.results_dir, "results.json")
    started = time.perf_counter()
    res: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("mode", "worker_result")}}

    def save() -> None:  # after every step, so that a late failure keeps the numbers already taken
        res["total_s"] = time.perf_counter() - started
        with open(results_path, "w") as fh:
            json.dump(res, fh, indent=2)

    res["environment"] = environment()
    _log(f"environment: {res['environment']}")
    res["group_size"] = args.group_size
    res["conversion"] = convert_gguf(args)
    res["warm_imports_s"] = warm_imports()
    res["cli_runs"], res["direct_runs"] = [], []
    for i in range(args.repeats):
        order = ("cli", "direct") if i % 2 == 0 else ("direct", "cli")
        for kind in order:
            if kind == "cli":
                res["cli_runs"].append(run_cli(args, len(res["cli_runs"]) + 1))
            else:
                res["direct_runs"].append(run_direct(args, len(res["direct_runs"]) + 1))
            save()
    direct_ok = [r for r in res["direct_runs"] if r["returncode"] == 0]
    cli_ok = [r for r in res["cli_runs"] if r["returncode"] == 0]
    if direct_ok:
        try:
            res["same_calibration_tokens"] = check_same_calibration(args, direct_ok[0]["token_ids"])
        except Exception as exc:
            res["same_calibration_tokens"] = {"error": f"{type(exc).__name__}: {exc}"}
        _log(f"calibration ids, qwodel vs direct: {res['same_calibration_tokens']}")
        for r in res["direct_runs"]:
            r.pop("token_ids", None)
    save()
    # The outputs on disk are those of each kind's last run; evaluate only if that run succeeded.
    res["perplexity"] = {}
    try:
        perplexities(
            args,
            res["perplexity"],
            cli_ok=bool(res["cli_runs"]) and res["cli_runs"][-1]["returncode"] == 0,
            direct_ok=bool(res["direct_runs"]) and res["direct_runs"][-1]["returncode"] == 0,
        )
    except Exception:
        import traceback

        res["perplexity"]["error"] = traceback.format_exc()
        print(res["perplexity"]["error"], flush=True)
    save()
    print()
    print(table(res), flush=True)
    return 0 if cli_ok and direct_ok and "error" not in res["perplexity"] else 1


if __name__ == "__main__":
    sys.exit(main())
