"""The ``qwodel`` command line.

    qwodel quantize ./gemma-2 --backend awq --format int4 --output ./output
    qwodel plan ./gemma-2 --output ./output      # every setting resolved, nothing loaded
    qwodel vram                                  # GPUs and their free memory
    qwodel demo                                  # the offline demo, no network, no GPU

User errors print one line on standard error and exit with code 2 (``--debug`` shows the
traceback); an interrupted run exits with code 130 and leaves no output folder behind (or, when
the interrupt came after the output was moved into place, says that it is complete).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Sequence

from . import __version__

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (token-shaped text masked) and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        from .engine.secrets import redact

        text = " ".join(redact(message).split())
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {text} (see '{self.prog} --help')\n")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="local model folder or Hugging Face hub id")
    p.add_argument("--backend", default="awq", help="quantization backend (only 'awq')")
    p.add_argument("--format", default="int4", help="output format (only 'int4': W4A16)")
    p.add_argument("--output", "-o", help="output folder (must be empty or absent, unless --overwrite)")
    p.add_argument("--calibration-dataset", default=None,
                   help="hub id, 'repo:subset' or a .json/.jsonl/.txt file (default wikitext:wikitext-2-raw-v1)")
    p.add_argument("--calibration-split", default="train", help="dataset split (default train)")
    p.add_argument("--text-column", default=None, help="column holding the text (default: detected)")
    p.add_argument("--token", default=None,
                   help="Hugging Face token (prefer the HF_TOKEN variable or `huggingface-cli login`)")
    p.add_argument("--batch-size", default=None, help="calibration batch size (default: from VRAM headroom)")
    p.add_argument("--seq-len", default=None, help="tokens per calibration sample (default: from VRAM headroom)")
    p.add_argument("--num-samples", default=None, help="calibration samples (default: from VRAM headroom)")
    p.add_argument("--ignore", action="append", default=None, metavar="NAME",
                   help="module name or 're:' pattern to keep in 16 bits; repeatable (default: lm_head)")
    p.add_argument("--mappings", default=None, metavar="FILE",
                   help="AWQ mappings for an architecture llm-compressor has none for: a .json or .yaml file with a "
                        "list of {smooth_layer, balance_layers}")
    p.add_argument("--group-size", default=None, help="32, 64 or 128 (default: 128, else the largest that divides)")
    p.add_argument("--symmetric", action="store_true", help="symmetric 4-bit weights (default asymmetric)")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration shuffle")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--awq-search", default="fast", choices=("fast", "stock"),
                   help="AWQ scale search: fast (default; 2-4x faster than stock on a GPU, with stock's choices in every "
                        "measured run; on a CPU it screens grid points on a slice of the samples first; 1.5-2.2x on two "
                        "cores) or stock (llm-compressor's own loop)")
    p.add_argument("--clip", default="search", choices=("search", "observer", "none"),
                   help="weight clipping after smoothing: search (default; per-group ranges chosen "
                        "by output error), observer (llm-compressor's MSE observer) or none")
    p.add_argument("--gpus", default=1, metavar="N",
                   help="calibrate on N GPUs, one process each under torchrun (default 1)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model repository's own Python code (only for repositories you trust)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qwodel", description="4-bit AWQ quantization of Hugging Face causal LMs for vLLM.")
    parser.add_argument("--version", action="version", version=f"qwodel-nb {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and every library's debug log (tokens masked)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    q = sub.add_parser("quantize", help="quantize a model to W4A16 with AWQ")
    _add_run_options(q)
    pl = sub.add_parser("plan", help="show every resolved setting without loading weights")
    _add_run_options(pl)
    sub.add_parser("vram", help="show the GPUs and their free memory")
    d = sub.add_parser("demo", help="build a small model offline, quantize it, reload it and report")
    d.add_argument("--workdir", default="qwodel-demo", help="folder for the demo model and its output (default ./qwodel-demo)")
    return parser


def _settings_from(args: argparse.Namespace, *, need_output: bool) -> Any:
    from .engine.settings import make_settings

    options: dict[str, Any] = {
        "model": args.model,
        "backend": args.backend,
        "format": args.format,
        "output": args.output,
        "calibration_split": args.calibration_split,
        "text_column": args.text_column,
        "token": args.token,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "num_samples": args.num_samples,
        "ignore": args.ignore,
        "group_size": args.group_size,
        "symmetric": args.symmetric,
        "dtype": args.dtype,
        "device": args.device,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "trust_remote_code": args.trust_remote_code,
        "awq_search": args.awq_search,
        "clip": args.clip,
        "gpus": args.gpus,
    }
    if args.calibration_dataset is not None:
        options["calibration_dataset"] = args.calibration_dataset
    if args.mappings is not None:
        options["mappings"] = read_mappings_file(args.mappings)
    if need_output and not args.output:
        from .engine.errors import OutputError

        raise OutputError("No output folder given: add --output DIR.")
    return make_settings(**options)


def read_mappings_file(path: str) -> Any:
    """The AWQ mappings in a .json or .yaml file (validated later, with the other settings)."""
    import yaml

    from .engine.errors import SettingsError

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            return yaml.safe_load(fh)  # JSON is YAML too
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SettingsError(f"--mappings file {path!r} cannot be read ({reason}); give a .json or .yaml file.") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML or JSON"
        raise SettingsError(f"--mappings file {path!r} is not valid YAML or JSON ({problem}).") from None


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .engine.logs import library_bars_silenced
    from .engine.plan import make_plan
    from .engine.report import format_plan, format_result, vllm_snippet
    from .engine.run import execute
    from .progress_bar import ProgressBar

    settings = _settings_from(args, need_output=True)
    if args.token:
        print("qwodel: note: a token on the command line can stay in your shell history; prefer HF_TOKEN.", file=sys.stderr)
    plan = make_plan(settings)
    print(format_plan(plan), flush=True)
    bar = ProgressBar(plan.model.num_layers)
    result = None
    try:
        with library_bars_silenced():
            result = execute(plan, [bar])
        args.written_to = result.output_path
        bar.close(ok=True)
        print()
        print(format_result(result))
        print("\nServe it with vLLM:\n" + vllm_snippet(result.output_path))
    finally:
        if result is None:
            bar.close(ok=False)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .engine.plan import make_plan
    from .engine.report import format_plan

    settings = _settings_from(args, need_output=False)
    print(format_plan(make_plan(settings, require_output=False)))
    return 0


def _cmd_vram(args: argparse.Namespace) -> int:
    from .engine.report import format_vram
    from .engine.vram import probe

    print(format_vram(probe()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo
    from .engine.report import format_plan, format_result

    print(f"qwodel demo: building a small Llama model offline under {os.path.abspath(args.workdir)} ...", flush=True)
    report = run_demo(args.workdir)
    print(format_plan(report.plan))
    print()
    print(format_result(report.result))
    print("\nperplexity on held-out text (lower is better):")
    for name, value in report.perplexity.items():
        print(f"  {name:<30} {value:8.3f}")
    print(f"\ngeneration from the reloaded 4-bit model:\n  {report.sample_text!r}")
    print(f"\ndemo model: {report.files.model_dir}\n4-bit output: {report.output_path}")
    return 0


COMMANDS = {"quantize": _cmd_quantize, "plan": _cmd_plan, "vram": _cmd_vram, "demo": _cmd_demo}


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, then stop
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER_ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.written_to = None  # set by `quantize` the moment its output is in place
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        code = _dispatch(args)
        # Restored inside the ``try``: an interrupt landing in the restore is still reported below.
        signal.signal(signal.SIGTERM, previous)
        return code
    except KeyboardInterrupt as exc:  # one that landed after the command's own handling was done
        signal.signal(signal.SIGTERM, previous)
        return _interrupted(exc, args)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; every outcome becomes one line and an exit code."""
    from .engine.errors import QwodelError
    from .engine.secrets import redact

    try:
        if args.command in {"quantize", "plan", "demo"}:
            from .engine.logs import debug_logging, route_library_logs

            if args.debug:
                from .engine.secrets import resolve_token

                debug_logging(resolve_token(getattr(args, "token", None)))
            else:
                route_library_logs("WARNING")
        return COMMANDS[args.command](args)
    except QwodelError as exc:
        if args.debug:
            raise
        print(f"qwodel: error: {redact(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc, args)
    except Exception as exc:  # an internal failure: one line, the traceback with --debug
        if args.debug:
            raise
        text = redact(str(exc)).strip().splitlines()
        print(
            f"qwodel: internal error: {type(exc).__name__}: {text[0][:300] if text else ''} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


def _interrupted(exc: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """Ctrl-C or SIGTERM: exit code 130, and one line that says whether the output was written."""
    written = getattr(exc, "output_path", None) or args.written_to
    if written:
        print(f"qwodel: interrupted after the output was written; it is complete in {written}", file=sys.stderr)
    else:
        print("qwodel: interrupted; no output folder was written.", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
