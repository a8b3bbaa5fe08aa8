r"""Where one AWQ run's wall time goes, stage by stage: llm-compressor's pipeline and qwodel's search.

bench/awq_profile.py sorts GPU kernel time by kind; on SmolLM2 on the H200 the kernels are a third
of the AWQ phase, and the rest is host time, which a kernel profile does not place. This wraps the
pipeline's stages (initialisation, tracing, the calibration and propagation passes, the smoothing
step, llm-compressor's data-free quantization pass) and the fast search's parts (per kind of parent,
the reference passes, candidate scales and weights, the grid-point passes) in timers that wait for
the GPU on entry and exit, so each stage is charged with its own kernels. The waits add a little
to the total. One variant of one case; a warm-up run and ``--repeats`` plain runs first, then one
run under cProfile (its functions by own time to RESULTS_DIR), then ``--repeats`` timed runs.
Usage (a table per timed run printed; RESULTS_DIR/awq_stages_<case>_<variant>.json)::

    python3 bench/awq_stages.py --case smollm2-gpu --repeats 1 --gguf /root/m/smollm2.gguf
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

import awq_speed  # noqa: E402  (bench/ on the path)

seconds: dict[str, float] = collections.defaultdict(float)
calls: collections.Counter = collections.Counter()


def _wait() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(function, label):
    """``function`` charging its wall time to ``label`` (a string, or a function of the arguments)."""

    def timed(*args, **kwargs):
        name = label(*args, **kwargs) if callable(label) else label
        _wait()
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _wait()
            seconds[name] += time.perf_counter() - started
            calls[name] += 1

    return timed


#: (owner, name, the owner's own attribute as it was, or _INHERITED) for each timer installed
_installed: list[tuple] = []
_INHERITED = object()


def _wrap(owner, name: str, label, *, static: bool = False) -> None:
    _installed.append((owner, name, vars(owner).get(name, _INHERITED)))
    timed = _timed(getattr(owner, name), label)
    setattr(owner, name, staticmethod(timed) if static else timed)


def remove_timers() -> None:
    """Every attribute :func:`install_timers` replaced, as it was (an inherited one inherited again)."""
    while _installed:
        owner, name, original = _installed.pop()
        if original is _INHERITED:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def install_timers() -> None:
    """Timers around the stages, until :func:`remove_timers`."""
    from llmcompressor.core import session as compression_session
    from llmcompressor.core.session_functions import LifecycleCallbacks
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.utils.hooks import HooksMixin
    from llmcompressor.pipelines.data_free.pipeline import DataFreePipeline
    from llmcompressor.pipelines.sequential import helpers, pipeline as sequential

    from qwodel_nb.engine import awq_capture, awq_search, awq_smoothing, weight_qparams

    oneshot_module = importlib.import_module("llmcompressor.entrypoints.oneshot")  # the package exports the function
    _wrap(oneshot_module.Oneshot, "__init__", "pipeline: Oneshot.__init__")
    _wrap(compression_session.CompressionSession, "initialize", "pipeline: session.initialize")
    _wrap(compression_session.CompressionSession, "finalize", "pipeline: session.finalize")
    _wrap(sequential, "trace_subgraphs", "pipeline: trace_subgraphs")
    for event in ("calibration_start", "sequential_epoch_end", "calibration_end"):
        _wrap(LifecycleCallbacks, event, f"pipeline: {event} (all modifiers)", static=True)
    _wrap(helpers.Subgraph, "forward",
          lambda *a, **k: "pipeline: layer passes, " + ("propagation" if HooksMixin._HOOKS_DISABLED else "calibration (AWQ's hooks on)"))
    _wrap(DataFreePipeline, "__call__", "pipeline: data-free pass (QuantizationModifier)", static=True)
    _wrap(QuantizationModifier, "on_sequential_epoch_end", "  of which: weight qparams of every layer")
    # the fast variants' own weight pass (it calls the stock one only in a distributed run)
    _wrap(weight_qparams.QuantizationModifier, "on_sequential_epoch_end", "  of which: weight qparams of every layer")
    _wrap(awq_capture.AWQModifier, "on_calibration_start", "  of which: AWQ resolves its mappings")
    _wrap(awq_capture.AWQModifier, "_smooth", "smoothing step (all mappings)")
    _wrap(awq_capture.AWQModifier, "_run_samples", "  reference outputs (eager)")
    _wrap(awq_capture.AWQModifier, "_compute_layer_means", "  balance layers' weight means", static=True)
    _wrap(awq_smoothing, "_smooth", "  scales folded into the weights")
    _wrap(awq_smoothing, "_all_finite", "  reference outputs checked finite")
    _wrap(awq_capture, "search_best_scales", lambda *a, **k: f"  search, {type(a[1].parent).__name__} parents")
    _wrap(awq_search, "candidate_scales", "    candidate scales")
    _wrap(awq_search._Passes, "_candidates", "    candidate weights")
    _wrap(awq_search, "_fused_attention", "    references under fused attention")
    _wrap(awq_search._Passes, "losses",
          lambda *a, **k: "    grid-point passes, " + ("fused attention" if k.get("attention") is not None else "eager or no attention"))
    _wrap(awq_search._Passes, "sample_errors",
          lambda *a, **k: "    screening passes, " + str(k.get("low") or (a[5] if len(a) > 5 else None) or "model's dtype"))
    _wrap(awq_search, "_result", "    choice and scales to the host")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="the AWQ phase's wall time by stage")
    awq_speed.add_case_options(parser)
    parser.add_argument("--variant", default="fast", help="stock, or one of awq_speed.py's fast variants")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    awq_speed.fill_case_defaults(args)
    args.save = False

    from qwodel_nb.engine.logs import library_bars_silenced, route_library_logs

    folder, tokenizer, calib = awq_speed.case_inputs(args)
    route_library_logs("WARNING")
    result = {"case": args.case, "variant": args.variant, "date": time.strftime("%Y-%m-%d"),
              "command": "python3 bench/awq_stages.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "plain_awq_s": [], "timed": []}
    with library_bars_silenced():
        awq_speed.run_variant(args.variant, args, folder, tokenizer, calib, None)  # warm-up
        for _ in range(args.repeats):
            result["plain_awq_s"].append(awq_speed.run_variant(args.variant, args, folder, tokenizer, calib, None)["awq_s"])
        profiled = os.path.join(args.results_dir, f"cprofile_{args.case}_{args.variant}_tottime.txt")
        awq_speed.run_variant(args.variant, args, folder, tokenizer, calib, None,
                              around=awq_speed.cprofile_into(profiled, sort="tottime", lines=90))
        install_timers()
        try:
            for _ in range(args.repeats):
                seconds.clear()
                calls.clear()
                run = awq_speed.run_variant(args.variant, args, folder, tokenizer, calib, None)
                stages = {name: {"s": seconds[name], "calls": calls[name]} for name in sorted(seconds, key=lambda n: -seconds[n])}
                result["timed"].append({"awq_s": run["awq_s"], "smoothing_s": run["smoothing_s"], "stages": stages})
                print(f"\n| stage ({args.variant}, AWQ phase {run['awq_s']:.3f} s with the timers' waits) | ms | calls |\n"
                      "| --- | --- | --- |")
                for name, stage in stages.items():
                    print(f"| {name} | {1000 * stage['s']:.1f} | {stage['calls']} |")
        finally:
            remove_timers()
    with open(os.path.join(args.results_dir, f"awq_stages_{args.case}_{args.variant}.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
