"""A faster AWQ scale search that makes the same choices as llm-compressor 0.14's.

On a CPU it screens the grid points on a slice of the samples by default (``engine/awq_screening.py``)
and evaluates in full only those the slice cannot rule out: the same choices in every measured run,
but not guaranteed. On a GPU, attention parents are searched under fused attention and the points
near the best confirmed with stock's arithmetic (``engine/search_attention.py``): stock's choice as
long as the two attentions' losses differ by less than 1% (they differed by at most 0.77%).

For each resolved mapping, llm-compressor's ``AWQModifier._compute_best_scale`` tries every grid
point (``n_grid`` = 20 by default) one after the other. Per point it copies the scaled weights
into each balance layer, runs the weight observer, stores the quantization parameters on the
module, fake-quantizes through the module, runs the parent module once per calibration batch,
keeps every output, computes the loss and reads it back to the host. Measured (bench/RESULTS.md):
on a GPU almost all of that time is launches, Python and host-device synchronisation, not
arithmetic; on a CPU a large share is the elementwise quantization work.

:func:`search_best_scales` computes the same quantity with less of that overhead:

* **Same scales, same quantizer.** The candidate scales use the stock formula point by point.
  The weights ``W * s`` of several grid points are stacked row-wise and quantized in one call of
  compressed-tensors' own ``calculate_qparams`` and ``fake_quantize`` (group quantization is row
  by row, so stacking rows changes nothing), with the dtypes the observer round trip produces.
  Tests check the result bit for bit against the observer path. On a GPU one Triton kernel
  (:mod:`.fused_candidates`) computes the same values, bit for bit, in one pass instead of some
  fifteen. On a CPU the operators run a grid point and a block of rows at a time, so that their
  float64 temporaries stay in the caches: 1.6x faster on SmolLM2's layers than all 20 points in
  one call, 3.3x on a 4096 x 4096 layer, the same values (``bench/cpu_candidates_probe.py``).
* **Nothing written to the model.** Balance layers get a temporary ``forward`` that applies the
  candidate weights; the module's parameters, observers and quantization parameters are never
  touched, so there is nothing to restore and a failure leaves the model as it was.
* **Several grid points per forward pass** when the batch is small: the parent's cached inputs
  are repeated ``g`` times along the batch dimension and each balance layer multiplies its slice
  with its own candidate weights (``torch.bmm``). ``g`` is bounded so that one pass never holds
  more tokens than the largest calibration batch (what the stock search already runs at once),
  or a small floor when batches are tiny. On a GPU, a pass under fused attention
  (:func:`fused_pass_tokens`) and a pass through a parent made of Linear layers and activations,
  such as an MLP (:func:`plain_pass_tokens`), may hold as many tokens as fit in the memory the
  run has already shown it can hold. One pass of ``g = 1`` uses ``F.linear`` exactly as the stock
  forward does; on the H200 the ``bmm`` passes gave the same losses bit for bit (bench/RESULTS.md).
* **Fused attention, then confirmation** (:mod:`.search_attention`; on by default on a GPU): an
  attention parent whose cached masks are plain causal ones runs every grid point under
  ``scaled_dot_product_attention`` (several points per pass, no score matrix), then the points
  within 2% of the best again under eager attention, with stock's arithmetic; the choice is the
  first minimum among those. A run stops doing this when the confirmations take more than half
  the points (flat loss curves, where it would not pay).
* **Direct tensor access** (:mod:`.resident`): where the parent and its cached arguments already
  sit on the execution device, compressed-tensors' per-call onloading is skipped during the passes.
* **Losses stay on the device** and are read back once per chunk of grid points (on a GPU, once
  per mapping), instead of once per point; the per-batch outputs are reduced at once instead of
  being kept for a final loss.
* **Token screening** (:mod:`.awq_screening`; on by default on a CPU, with enough calibration
  tokens): every grid point on a slice of the samples first, then only the points the slice
  cannot rule out on all tokens, with the stock arithmetic. The choice is the first minimum among
  those; the other points' losses are estimates, flagged as such in the result and the records.
  On a CPU with AMX the screening passes run their matrix products in bfloat16
  (:mod:`.screening_precision`); the confirmations stay float32.
* **Linear parents by their Gram matrix** (float32 models, i.e. on a CPU). When the parent is the
  single balance layer itself (``up_proj -> down_proj``, ``v_proj -> o_proj``), the output error
  of candidate weights ``Wq`` is ``||X (Wq - W)^T||^2 = sum((E G) * E)`` with ``E = Wq - W`` and
  ``G = X^T X``, accumulated once per mapping; this is used when it costs fewer multiply-adds than
  the forward passes, screened where screening would run (many tokens, narrow inputs: on SmolLM2
  at 32 x 512 tokens, not at 8 x 256). In bf16/fp16 the stock loss includes the
  rounding of both outputs to that dtype, which the exact form leaves out, so there the forward
  passes are used.

The loss (of every point without screening or fused attention, of the confirmed points with
them) is the stock one:
the mean squared error between the unquantized parent outputs given by llm-compressor and the
candidate outputs, per batch ``F.mse_loss(..., reduction="sum")`` in the outputs' dtype, summed
and divided by the number of elements; token loss masks and distributed all-reduce are honoured
as in stock. The first minimum wins, as in stock.

Anything the fast path does not cover (another quantization strategy, a global scale, a parent
whose output does not keep the repeated batch) makes :func:`supports` false or raises
:class:`Unsupported`, and the caller falls back to the stock search for that mapping.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import cpu_candidates, lean_attention, screening_precision
from .awq_screening import confirm, cut_arguments, estimated_losses, screening_cuts, screening_default
from .batch_arguments import map_batch, rows_and_tokens
from .ranks import agree_all, agree_min, agree_sum, all_reduce, is_distributed
from .resident import direct_access
from .search_attention import PASS_ROW_UNITS, FusedAttention, plan, references_agree, to_confirm

#: tokens a grid-batched pass may hold when the calibration batches are smaller than this. On a
#: CPU, measured side by side on SmolLM2 (bench/RESULTS.md, "Eager attention a few samples at a
#: time on a CPU"): 2,048 against 4,096 tokens, at 8 x 256 on 2 cores the AWQ phase 1.03x faster
#: with 0.82x the peak RSS; at 32 x 512, and on 16 cores, the same time
FLOOR_TOKENS = {"cpu": 2048, "cuda": 2048}
#: share of the memory already allocated on the GPU that the candidate weights of a chunk may take
WEIGHT_BUDGET_FRACTION = 0.05
#: bytes per weight element while candidates are made: the float32 product and quotient and
#: compressed-tensors' temporaries besides the kept candidate (measured on an 8B-shaped model:
#: counting only the kept bf16 candidates let the peak grow by half)
QUANT_WORKING_BYTES = 16
#: the working set allowed for the candidates kept on a CPU, at CPU_KEPT_BYTES per weight element
#: (float32; the pieces they are made in add little). SmolLM2-135M keeps all 20 points of a mapping,
#: so token screening's confirmations reuse the screening pass's candidates instead of making them again
CPU_WORKING_BYTES = 256 * 1024**2
CPU_KEPT_BYTES = 4
#: ... made in pieces of at most this many weight elements each (8 MiB of float64 temporaries):
#: the elementwise chain then runs in the caches. Measured on this project's 2-core CPU
#: (bench/RESULTS.md): SmolLM2's 576 x 1536 layers, 20 points 0.29 s in one piece, 0.18 s in
#: pieces; a 4096 x 4096 layer, 2 points 0.58 s and 0.18 s
CPU_PIECE_ELEMENTS = 1024**2
#: ... in place, in buffers reused across pieces (:mod:`.cpu_candidates`; benchmarks switch it off to compare)
CPU_IN_PLACE = True
#: make candidates with the fused GPU kernel where it applies (benchmarks switch it off to compare)
FUSED_KERNEL = True
#: share of the allocated GPU memory the fused kernel's kept candidates may take, with a small floor.
#: They are the search's only memory beyond stock's (which writes each point into the weights in
#: place): 5% let the peak on the 8B shape rise by 5.6-8.7% over stock's (bench/RESULTS.md)
FUSED_KEPT_FRACTION = 0.02
FUSED_KEPT_FLOOR_BYTES = 32 * 1024**2
#: screen the grid points on a slice of the tokens before evaluating the best in full (.awq_screening):
#: None leaves it to the caller and the device (on by default on a CPU only); the speed benchmark
#: forces it on or off to compare
SCREENING: bool | None = None
#: run attention parents' passes under fused causal attention where it computes eager's, then
#: confirm the points near the best under eager attention (.search_attention): None leaves it to
#: the caller and the device (on by default on a GPU only); the speed benchmark forces it off to compare
FUSED_ATTENTION: bool | None = None


class Unsupported(Exception):
    """The fast path cannot reproduce the stock search for this mapping; use the stock search."""


@dataclass
class SearchResult:
    best_index: int
    best_scales: torch.Tensor  # on the CPU, like stock's return value
    losses: list[float]
    method: str  # "forward" or "gram"
    points_per_pass: int = 1
    fused: bool = False  # candidates made by the fused GPU kernel
    confirmed: tuple[int, ...] | None = None  # screening or fused attention: the points with stock's loss
    fused_attention: bool = False  # the parent's passes ran fused causal attention (.search_attention)
    screened_in: str | None = None  # screening: the dtype of its matrix products ("bfloat16" or the model's)
    notes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> tuple[bool, ...]:
        """Per grid point: whether its loss is the stock loss (else a screening or fused-attention estimate)."""
        if self.confirmed is None:
            return (True,) * len(self.losses)
        return tuple(i in self.confirmed for i in range(len(self.losses)))


# -- candidate scales and their quantized weights ------------------------------------------------


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, grid: Sequence[tuple[float, bool]]) -> torch.Tensor:
    """The scales of every grid point, [G, in_features], with the stock arithmetic.

    Stock takes the powers point by point with the point's ratio as a Python number; they are
    taken for all points at once where that gives the same values (:func:`_powers`). The rest is
    elementwise or a row's exact maximum and minimum, so it runs on all points at once with the
    same values: some 20 kernel launches per mapping instead of some 260.
    """
    ratios = [float(ratio) for ratio, _ in grid]
    powered = _powers(x_mean, ratios)
    duo = [bool(use_duo) for _, use_duo in grid]
    if any(duo):
        balanced = powered / (_powers(w_mean, [1 - ratio for ratio in ratios]) + 1e-4)
        for i, use_duo in enumerate(duo):
            if not use_duo:  # stock's grid: only the first point (ratio 0 without duo scaling)
                balanced[i] = powered[i]
        powered = balanced
    scales = powered.clamp(min=1e-4)
    scales = scales / (scales.amax(dim=1, keepdim=True) * scales.amin(dim=1, keepdim=True)).sqrt()
    # stock sets inf and nan to 1 by boolean indexing, which waits for the device; the same values
    return torch.where(torch.isfinite(scales), scales, torch.ones_like(scales))


#: exponents that torch computes on paths of their own when given as a Python number (a fill, a
#: copy, a square root, a reciprocal, a product): :func:`_powers` takes these one at a time
_OWN_PATH_EXPONENTS = frozenset({0.0, 1.0, 2.0, 3.0, 0.5, -0.5, -1.0, -2.0})
#: per (device type, dtype): whether a tensor of exponents gave the same values as Python ones
_POWERS_CHECKED: dict[tuple[str, torch.dtype], bool] = {}


def _powers(base: torch.Tensor, exponents: list[float]) -> torch.Tensor:
    """``base.pow(e)`` for each of ``exponents``, as stock takes them one at a time: [len, base.numel()].

    With a tensor of exponents torch runs the same elementwise power as with a Python number,
    except at the exponents it takes on paths of their own (``_OWN_PATH_EXPONENTS``: the square
    root at 0.5 gave other bits on a CPU), which are taken one at a time here too. The first time
    a device type and dtype meet in a process, the result is compared with the one-at-a-time
    powers (one wait for the device); where they differ, the powers stay one at a time.
    """
    flat = base.reshape(-1)

    def one_at_a_time() -> torch.Tensor:
        return torch.stack([flat.pow(e) for e in exponents])

    key = (flat.device.type, flat.dtype)
    general = [e not in _OWN_PATH_EXPONENTS for e in exponents]
    if sum(general) < 2 or not _POWERS_CHECKED.get(key, True):
        return one_at_a_time()
    powers = torch.pow(flat.view(1, -1), _exponent_column(tuple(exponents), flat.dtype, flat.device))
    for i, exponent in enumerate(exponents):
        if not general[i]:
            powers[i] = flat.pow(exponent)
    if key not in _POWERS_CHECKED:
        _POWERS_CHECKED[key] = bool(torch.equal(powers, one_at_a_time()))
        if not _POWERS_CHECKED[key]:
            return one_at_a_time()
    return powers


@functools.lru_cache(maxsize=16)
def _exponent_column(exponents: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The exponents as a [len, 1] tensor on ``device``, made once per grid (every mapping of a run
    has the same): from pinned memory, since a pageable copy would wait for the queued kernels."""
    column = torch.tensor(exponents, dtype=dtype).view(-1, 1)
    if device.type != "cpu":
        column = column.pin_memory().to(device, non_blocking=True)
    return column


def quant_args_of(layer: torch.nn.Module) -> Any | None:
    scheme = getattr(layer, "quantization_scheme", None)
    return getattr(scheme, "weights", None) if scheme is not None else None


def supports(args: Any) -> bool:
    """Integer group or channel weight quantization with static, observer-computed parameters."""
    from compressed_tensors.quantization import QuantizationStrategy, QuantizationType

    if args is None:
        return True  # a balance layer without a scheme keeps its weight unquantized, as in stock
    return (
        args.type == QuantizationType.INT
        and args.strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.CHANNEL)
        and not args.dynamic
        and getattr(args, "actorder", None) in (None, False)
        and getattr(args, "scale_dtype", None) is None
    )


def quantize_with_range(layer: torch.nn.Module, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, args: Any) -> torch.Tensor:
    """Fake-quantize ``rows`` [n, in] with per-group ranges ``lo``/``hi`` [n, groups], as the layer would.

    Scale and zero point come from compressed-tensors' ``calculate_qparams`` and take the dtypes
    of the layer's ``weight_scale``/``weight_zero_point`` parameters (``update_qparams`` copies
    into them), then ``fake_quantize``: the observer round trip without the observer.
    """
    from compressed_tensors.quantization import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    scale, zero = calculate_qparams(lo, hi, args)
    stored_scale = getattr(layer, "weight_scale", None)
    stored_zero = getattr(layer, "weight_zero_point", None)
    if stored_scale is not None:
        scale = scale.to(stored_scale.dtype)
    if stored_zero is not None:
        zero = zero.to(stored_zero.dtype)
    return fake_quantize(rows, scale, zero, args)


#: per (device, dtypes, scheme): whether the fused kernel passed its self-check in this process
_FUSED_CHECKED: dict[tuple, bool] = {}


def fused_applies(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> bool:
    """Whether :func:`quantize_candidates` takes the one-kernel GPU path for this layer.

    The first time a device, weight dtype, scale dtype and scheme meet, the kernel is compared with
    the PyTorch path on a slice of this layer (:func:`_fused_self_check`); if it cannot run here or
    differs, the PyTorch path is used for the rest of the process.
    """
    if not FUSED_KERNEL or not weight.is_cuda:
        return False
    from .fused_candidates import supported

    stored = getattr(layer, "weight_scale", None), getattr(layer, "weight_zero_point", None)
    if not supported(weight, scales, args, *stored):
        return False
    key = (str(weight.device), weight.dtype, scales.dtype, args.group_size, bool(args.symmetric), args.num_bits,
           getattr(stored[0], "dtype", None), getattr(stored[1], "dtype", None))
    if key not in _FUSED_CHECKED:
        _FUSED_CHECKED[key] = _fused_self_check(layer, weight, scales, args)
    return _FUSED_CHECKED[key]


def _fused_self_check(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> bool:
    """The fused kernel against the PyTorch path on this layer's first rows, first and last grid
    point, with its last step in both forms: equal bit for bit, or the kernel is not used (a
    warning says why)."""
    import logging

    from .fused_candidates import fused_candidates

    rows, points = weight[:32], scales[[0, -1]]
    why = None
    try:
        expected = torch_candidates(layer, rows, points, args)
        # both forms of its last step (a division, or a multiplication by the reciprocals on large layers)
        if not all(torch.equal(fused_candidates(rows, points, args, reciprocal), expected) for reciprocal in (False, True)):
            why = "its candidate weights differ from the PyTorch operators' on this GPU"
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # Triton cannot compile or launch here (no C compiler, an unsupported GPU...)
        why = f"it cannot run here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if why is None:
        return True
    logging.getLogger("qwodel_nb.engine").warning("qwodel: the fused AWQ candidate kernel is not used: %s; "
                                                  "the search makes them with PyTorch operators (same results, slower)", why)
    return False


def quantize_candidates(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> torch.Tensor:
    """``Q(W * s) / s`` for each row of ``scales``: [g, out, in], in the weight's dtype.

    On a GPU with Triton, one kernel does it (:mod:`.fused_candidates`, the same arithmetic bit for
    bit); elsewhere :func:`torch_candidates`.
    """
    if fused_applies(layer, weight, scales, args):
        from .fused_candidates import fused_candidates

        return fused_candidates(weight, scales, args)
    return torch_candidates(layer, weight, scales, args)


def torch_candidates(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> torch.Tensor:
    """``Q(W * s) / s`` for each row of ``scales`` with PyTorch operators: [g, out, in].

    Equal, bit for bit, to what the stock search puts into ``layer.weight`` for each point: the
    product is formed in float32 and stored in the weight's dtype (``weight.data.copy_``), the
    memoryless min-max observer and ``calculate_qparams`` give scale and zero point, which take
    the dtypes of the layer's ``weight_scale``/``weight_zero_point`` parameters (``update_qparams``
    copies into them), then ``fake_quantize``, then division by the scales and a cast back. On a
    CPU the same steps run in place in reused buffers (:mod:`.cpu_candidates`) where that gives the
    same values, else large batches are made in pieces (:func:`_candidates_in_pieces`).
    """
    scales = scales.to(weight.device)
    if CPU_IN_PLACE and cpu_candidates.applies(layer, weight, scales, args):
        return cpu_candidates.candidates(layer, weight, scales, args, CPU_PIECE_ELEMENTS)
    if weight.device.type == "cpu" and scales.shape[0] * weight.numel() > CPU_PIECE_ELEMENTS:
        return _candidates_in_pieces(layer, weight, scales, args)
    return _candidates_at_once(layer, weight, scales, args)


def _candidates_at_once(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> torch.Tensor:
    from compressed_tensors.quantization import QuantizationStrategy

    g = scales.shape[0]
    out_features, in_features = weight.shape
    scaled = (weight.unsqueeze(0) * scales.view(g, 1, in_features)).to(weight.dtype)
    rows = scaled.reshape(g * out_features, in_features)
    if args.strategy == QuantizationStrategy.GROUP:
        grouped = rows.unflatten(-1, (-1, args.group_size))
    else:  # CHANNEL: one group per row
        grouped = rows.unsqueeze(-2)
    dequant = quantize_with_range(layer, rows, grouped.amin(dim=-1), grouped.amax(dim=-1), args)
    candidates = dequant.view(g, out_features, in_features) / scales.view(g, 1, in_features)
    return candidates.to(weight.dtype)


def _candidates_in_pieces(layer: torch.nn.Module, weight: torch.Tensor, scales: torch.Tensor, args: Any) -> torch.Tensor:
    """The candidates a grid point and a block of rows at a time, each piece's float64
    temporaries within ``CPU_PIECE_ELEMENTS`` (a CPU's caches). Group quantization is row by row
    and each point has its own scales, so the pieces are independent: the same values."""
    g = scales.shape[0]
    out_features, in_features = weight.shape
    candidates = torch.empty(g, out_features, in_features, dtype=weight.dtype)
    rows = max(1, CPU_PIECE_ELEMENTS // in_features)
    for point in range(g):
        for start in range(0, out_features, rows):
            stop = min(start + rows, out_features)
            candidates[point, start:stop] = _candidates_at_once(layer, weight[start:stop], scales[point : point + 1], args)[0]
    return candidates


# -- running the parent on several grid points at once --------------------------------------------


@contextlib.contextmanager
def candidate_forwards(weights: dict[torch.nn.Module, torch.Tensor], g: int) -> Iterator[None]:
    """Let each balance layer apply its own candidate weights to its slice of a g-fold batch.

    The replacement lives in the module's instance dictionary only for the duration of the pass
    (compressed-tensors may have put a ``forward`` there already; it is put back as it was).
    """
    missing = object()
    saved: dict[torch.nn.Module, Any] = {}

    def make_forward(candidates: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
        # the argument is named as in nn.Linear.forward: a Linear parent is called as parent(input=x)
        if g == 1:
            only = candidates[0]
            return lambda input: F.linear(input, only, bias)

        def forward(input: torch.Tensor) -> torch.Tensor:
            lead = input.shape[:-1]
            y = torch.bmm(input.reshape(g, -1, input.shape[-1]), candidates.transpose(1, 2))
            if bias is not None:
                y = y + bias
            return y.reshape(*lead, y.shape[-1])

        return forward

    # written into the instance dictionary directly: nn.Module.__setattr__ would first look the name
    # up among parameters, buffers and submodules (a function is none of them), several thousand
    # times per run
    try:
        for layer, candidates in weights.items():
            saved[layer] = layer.__dict__.get("forward", missing)
            layer.__dict__["forward"] = make_forward(candidates, getattr(layer, "bias", None))
        yield
    finally:
        for layer, previous in saved.items():
            if previous is missing:
                layer.__dict__.pop("forward", None)
            else:
                layer.__dict__["forward"] = previous


def repeat_batch(arguments: dict[str, Any], g: int) -> tuple[dict[str, Any], int]:
    """The parent's cached keyword arguments with the batch repeated g times (grid-point major):
    the tensors that follow the batch (:mod:`.batch_arguments`) are repeated. Returns the
    arguments and the batch size.
    """
    if not arguments:
        raise Unsupported("no cached arguments")
    first_key = next(iter(arguments))
    first = arguments[first_key]
    if not isinstance(first, torch.Tensor) or first.dim() < 2:
        raise Unsupported("the parent's first argument is not a batch of activations")
    batch = first.shape[0]
    if g == 1:
        return dict(arguments), batch
    return map_batch(arguments, lambda value: value.repeat(g, *([1] * (value.dim() - 1)))), batch


def _first_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# -- the search -------------------------------------------------------------------------------------


def _batches(modifier: Any, parent: torch.nn.Module) -> list[dict[str, Any]]:
    return list(modifier._parent_args_cache[parent])


def _loss_masks() -> list | None:
    from llmcompressor.core import active_session

    state = active_session().state
    return state.loss_masks if state else None


def gpu_working_budget(device: torch.device) -> int:
    """Bytes a short-lived computation may take on the GPU without raising the run's peak much.

    The larger of a few percent of what is allocated and the gap between the peak reached so far
    in this run (calibration forward passes, usually) and what is allocated now: memory the run
    has already shown it can hold.
    """
    allocated, peak = gpu_memory(device)
    return max(int(WEIGHT_BUDGET_FRACTION * allocated), peak - allocated)


def gpu_memory(device: torch.device) -> tuple[int, int]:
    """Bytes allocated on the GPU now and at the run's peak so far, from one read of the caching
    allocator's statistics. ``torch.cuda.memory_allocated`` and ``max_memory_allocated`` each
    flatten all of them into a new dictionary in Python: about 0.3 ms a call under cProfile on
    the H200, 150 calls in a SmolLM2 run (bench/RESULTS.md)."""
    stats = torch.cuda.memory_stats_as_nested_dict(device).get("allocated_bytes", {}).get("all", {})
    return int(stats.get("current", 0)), int(stats.get("peak", 0))


def points_quantized_together(num_points: int, numel_per_point: int, device: torch.device, *, fused: bool = False) -> int:
    """How many grid points' candidate weights are made in one quantization call.

    On a CPU as many as a fixed working set allows (``CPU_WORKING_BYTES``), counting the kept
    candidates only (``CPU_KEPT_BYTES`` per element): they are made in cache-sized pieces
    (:func:`_candidates_in_pieces`), whose temporaries are small. On a GPU, as many as fit
    twice: the working set of making them (``QUANT_WORKING_BYTES`` per element) within
    :func:`gpu_working_budget`, and the kept bf16/fp16 candidates, which stay during the forward
    passes, within a few percent of what is allocated. The ``fused`` kernel needs no working set
    beyond its result; its kept candidates get ``FUSED_KEPT_FRACTION`` of what is allocated, or
    ``FUSED_KEPT_FLOOR_BYTES``.
    """
    if numel_per_point <= 0:
        return num_points
    if device.type != "cuda":
        return max(1, min(num_points, CPU_WORKING_BYTES // (numel_per_point * CPU_KEPT_BYTES)))
    allocated, _ = gpu_memory(device)
    if fused:
        kept = max(int(FUSED_KEPT_FRACTION * allocated), FUSED_KEPT_FLOOR_BYTES)
        return max(1, min(num_points, kept // (numel_per_point * 2)))
    by_kept = int(WEIGHT_BUDGET_FRACTION * allocated) // (numel_per_point * 2)
    by_working_set = gpu_working_budget(device) // (numel_per_point * QUANT_WORKING_BYTES)
    return max(1, min(num_points, by_working_set, by_kept))


def points_per_pass(num_points: int, batch_tokens: int, device: torch.device, cap_tokens: int | None = None) -> int:
    """How many grid points one forward pass over batches of ``batch_tokens`` evaluates.

    A pass holds at most as many tokens as the largest calibration batch (``cap_tokens``, by
    default the batch itself), which the stock search already runs in one pass, or a small floor
    when batches are tiny; so activation memory stays where stock has it.
    """
    floor = FLOOR_TOKENS.get(device.type, FLOOR_TOKENS["cuda"])
    cap = max(cap_tokens or batch_tokens, batch_tokens, floor)
    by_tokens = max(1, cap // max(batch_tokens, 1))
    return max(1, min(num_points, by_tokens))


def fused_pass_tokens(references: list[torch.Tensor], device: torch.device) -> int:
    """Tokens a pass under fused attention may hold on a GPU: as many as fit in
    :func:`gpu_working_budget` at ``PASS_ROW_UNITS`` output rows per token. Eager attention's score
    matrix is gone from such a pass, so at the same memory it holds several grid points' tokens.
    0 on a CPU (the usual bounds apply)."""
    if device.type != "cuda" or not references:
        return 0
    row_bytes = references[0].shape[-1] * references[0].element_size()
    return gpu_working_budget(device) // (row_bytes * PASS_ROW_UNITS)


#: modules whose memory per token is that of their input: activations, dropout
_ELEMENTWISE_MODULES = ("torch.nn.modules.activation", "torch.nn.modules.dropout", "transformers.activations")


def plain_pass_tokens(parent: torch.nn.Module, batches: list[dict[str, Any]], references: list[torch.Tensor],
                      device: torch.device) -> int:
    """Tokens a pass may hold on a GPU when the parent is made of Linear layers and activations
    alone (an MLP, or the balance layer itself) and takes nothing but its input activations: as
    many as fit in :func:`gpu_working_budget` at the elements per token that :func:`_plain_units`
    counts. Such a pass holds a few tensors as wide as its layers per token, never a score matrix,
    so at batch 16 x 512 on SmolLM2 it takes 4 to 8 grid points at once in memory the run has
    already held. 0 on a CPU and for any other parent (the usual bounds apply)."""
    if device.type != "cuda" or not batches or not references:
        return 0
    units = _plain_units(parent, batches[0], references[0])
    if units is None:
        return 0
    return gpu_working_budget(device) // (units * references[0].element_size())


def _plain_units(parent: torch.nn.Module, arguments: dict[str, Any], reference: torch.Tensor) -> int | None:
    """Elements a pass through ``parent`` holds per token and grid point, at most: the repeated
    input, every Linear layer's output, one more tensor as wide as the widest (an activation or a
    product, alive beside its operands) and the loss's difference. A gated MLP holds at most its
    input, three tensors of its intermediate width (the activation, the up projection, their
    product) and its output; this counts one output more. None where the parent takes more than
    one tensor (attention takes masks and rotary tables) or has a leaf module that is neither a
    Linear layer nor elementwise."""
    given = [value for value in arguments.values() if value is not None]
    if len(given) != 1 or not isinstance(given[0], torch.Tensor):
        return None
    widths = [module.out_features for module in parent.modules() if isinstance(module, torch.nn.Linear)]
    for module in parent.modules():
        if not isinstance(module, torch.nn.Linear) and next(module.children(), None) is None \
                and type(module).__module__ not in _ELEMENTWISE_MODULES:
            return None
    if not widths:
        return None
    return given[0].shape[-1] + sum(widths) + max(widths) + reference.shape[-1]


#: share of the grid points token screening confirms on all tokens, for comparing the cost of
#: screened forward passes with the Gram form's: 208 of 600 (35%) on SmolLM2's up -> down
#: mappings at 8 x 256 tokens on a CPU (bench/RESULTS.md)
SCREEN_CONFIRM_SHARE = 0.35


def _gram_is_cheaper(tokens: int, in_features: int, out_features: int, num_points: int,
                     screened_tokens: int | None = None) -> bool:
    """Whether the Gram form takes fewer multiply-adds than the forward passes: every point on
    every token, or with token screening (``screened_tokens`` per point, then about
    ``SCREEN_CONFIRM_SHARE`` of the points on every token)."""
    per_point = tokens if screened_tokens is None else screened_tokens + SCREEN_CONFIRM_SHARE * tokens
    direct = num_points * per_point * in_features * out_features
    gram = tokens * in_features * in_features + num_points * out_features * in_features * in_features
    return gram < direct


def _screens(screen: bool | None, device: torch.device) -> bool:
    """Whether this search screens its grid points where it can: the caller's wish, else the
    device's default; ``SCREENING``, when set, over both."""
    screen = screening_default(device) if screen is None else screen
    return screen if SCREENING is None else SCREENING


def _cut_tokens(batches: list[dict[str, Any]], cuts: list | None) -> int | None:
    """Tokens in a screening slice (None without one)."""
    if cuts is None:
        return None
    total = 0
    for cut in cuts:
        rows, tokens = rows_and_tokens(batches[cut.batch])
        total += cut.rows * (tokens // rows if rows else 0)
    return total


def search_best_scales(
    modifier: Any,
    mapping: Any,
    fp16_outputs: list[torch.Tensor],
    orig_layer_weights: dict[torch.nn.Module, torch.Tensor],
    *,
    on_points: Callable[[list[int], list[float]], None] | None = None,
    live: bool | None = None,
    screen: bool | None = None,
    attention: bool | None = None,
) -> SearchResult:
    """Evaluate every grid point of ``mapping`` and return the first best, as stock would.

    ``on_points(indices, losses)`` is called as losses become known (after each chunk when
    ``live``, else once at the end); it may raise to stop the search (cancel). ``live`` defaults
    to true on a CPU, where reading a loss costs no synchronisation. ``screen`` allows token
    screening (:mod:`.awq_screening`) where the calibration set is large enough; by default
    (None) on a CPU only. ``SCREENING``, when set, overrides both. ``attention`` allows fused
    attention for an attention parent (:mod:`.search_attention`); by default (None) on a GPU only;
    ``FUSED_ATTENTION``, when set, overrides it.
    """
    from compressed_tensors.utils import get_execution_device

    parent = mapping.parent
    device = get_execution_device(parent)
    live = device.type == "cpu" if live is None else live
    grid = modifier._get_grid_search_params()
    num_points = len(grid)

    x_sum, count = modifier._smooth_activation_stats[mapping.smooth_name]
    x_sum, count = all_reduce([x_sum, count])
    x_mean = x_sum.to(device) / count.to(device)
    w_mean = modifier._compute_layer_means(mapping.balance_layers).to(device) if modifier.duo_scaling else None
    scales = candidate_scales(x_mean, w_mean, grid)

    quantized = [layer for layer in mapping.balance_layers if quant_args_of(layer) is not None]
    for layer in mapping.balance_layers:
        if not supports(quant_args_of(layer)):
            raise Unsupported(f"weight scheme of {type(layer).__name__} not covered")
        if not isinstance(layer, torch.nn.Linear):
            raise Unsupported("balance layer is not a Linear")

    batches = _batches(modifier, parent)
    masks = _loss_masks()
    if len(batches) != len(fp16_outputs):
        raise Unsupported("cached batches and reference outputs differ in number")

    screen = _screens(screen, device)
    single_linear = (
        isinstance(parent, torch.nn.Linear) and len(mapping.balance_layers) == 1 and mapping.balance_layers[0] is parent
    )
    if single_linear and parent in quantized and parent.weight.dtype == torch.float32:
        # Only in float32: the stock loss compares outputs rounded to the model's dtype, and in
        # bf16/fp16 that rounding is part of what it measures (large activations make it matter);
        # the Gram form computes the exact error instead and would choose differently.
        # every rank must take the same branch (each calls collectives): decide on all ranks' tokens
        tokens = int(agree_sum(sum(rows_and_tokens(b)[1] for b in batches)))
        out_f, in_f = parent.weight.shape
        # the forward passes' cost with token screening where it would run (one process only)
        cuts = screening_cuts(batches, num_points) if screen and not is_distributed() else None
        if _gram_is_cheaper(tokens, in_f, out_f, num_points, screened_tokens=_cut_tokens(batches, cuts)):
            losses = _gram_losses(parent, orig_layer_weights[parent], scales, batches, masks, on_points, live)
            return _result(modifier, mapping, scales, losses, "gram", 1)

    attention = device.type == "cuda" if attention is None else attention
    attention = attention if FUSED_ATTENTION is None else FUSED_ATTENTION
    with direct_access(parent, batches, device):
        losses, g, fused, confirmed, attended, screened_in = _forward_losses(
            parent, quantized, orig_layer_weights, scales, grid, batches, fp16_outputs, masks, device, on_points, live,
            screen, attention,
        )
    return _result(modifier, mapping, scales, losses, "forward", g, fused, confirmed, attended, screened_in)


@dataclass
class _Attended:
    """A parent's passes under fused attention: the switch, the batches without their mask
    tensors, and the reference outputs recomputed under it."""

    attention: FusedAttention
    batches: list[dict[str, Any]]
    references: list[torch.Tensor]


def _fused_attention(parent: torch.nn.Module, batches: list[dict[str, Any]], references: list[torch.Tensor]) -> _Attended | None:
    """Fused causal attention for this parent's passes (:mod:`.search_attention`), or None where it
    does not apply or its references differ from llm-compressor's eager ones by more than
    rounding. Every rank takes the same branch."""
    attention = plan(parent, batches)
    fused_batches: list[dict[str, Any]] = []
    fused_references: list[torch.Tensor] = []
    if attention is not None:
        fused_batches = [attention.arguments(b) for b in batches]
        with torch.no_grad(), attention.active():
            fused_references = [_first_output(parent(**b)) for b in fused_batches]
        if not references_agree(fused_references, references):
            attention = None
    if not agree_all(attention is not None):
        return None
    return _Attended(attention, fused_batches, fused_references)


def _first(arguments: dict[str, Any]) -> torch.Tensor:
    return next(iter(arguments.values()))


def _result(modifier: Any, mapping: Any, scales: torch.Tensor, losses: list[float], method: str, g: int,
            fused: bool = False, confirmed: tuple[int, ...] | None = None, fused_attention: bool = False,
            screened_in: str | None = None) -> SearchResult:
    exact = confirmed if confirmed is not None else range(len(losses))
    best_index, best_error = -1, float("inf")
    for i in exact:  # screened: only confirmed points are candidates for the choice
        if losses[i] < best_error:  # strict: the first minimum wins, as in stock
            best_index, best_error = i, losses[i]
    if best_index < 0:
        raise Exception(
            "No finite loss was found in the AWQ grid search; the parent module's outputs contain NaN or inf "
            f"for {mapping.smooth_name}."
        )
    initial = losses[0]
    modifier._error_metrics.append(
        {
            "layer_name": mapping.smooth_name,
            "parent_name": mapping.parent_name,
            "initial_error": initial,
            "best_error": best_error,
            "reduction": best_error / initial if initial > 0 else 1.0,
        }
    )
    best = scales[best_index].detach().to("cpu", copy=True)  # checked on the host: one wait for the device, not two
    assert torch.isnan(best).sum() == 0, f"NaN found in scales: {best}"
    return SearchResult(best_index, best, losses, method, g, fused, confirmed, fused_attention, screened_in)


def _rows(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``tensor[rows]`` without a synchronisation: a view where the rows are a run (the usual case),
    else an index copied to the device from pinned memory. Indexing a GPU tensor with a Python list
    copies the index from pageable memory, which waits for every kernel queued before it; on
    SmolLM2 that was about four waits per mapping in the middle of its passes."""
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return tensor[rows[0] : rows[0] + len(rows)]
    index = torch.tensor(rows, dtype=torch.long)
    if tensor.device.type != "cpu":
        index = index.pin_memory().to(tensor.device, non_blocking=True)
    return tensor.index_select(0, index)


def _forward_losses(
    parent: torch.nn.Module,
    quantized: list[torch.nn.Module],
    orig_layer_weights: dict[torch.nn.Module, torch.Tensor],
    scales: torch.Tensor,
    grid: Sequence[tuple[float, bool]],
    batches: list[dict[str, Any]],
    fp16_outputs: list[torch.Tensor],
    masks: list | None,
    device: torch.device,
    on_points: Callable | None,
    live: bool,
    screen: bool = False,
    attention: bool = False,
) -> tuple[list[float], int, bool, tuple[int, ...] | None, bool, str | None]:
    """Every grid point's loss by forward passes of the parent: on all tokens, screened, or under
    fused attention and then confirmed. Returns the losses, the points per pass, whether the
    fused candidate kernel made them, the points whose loss is stock's (None: all of them),
    whether fused attention ran, and the dtype screening's matrix products ran in (None: no screening).

    Screening (:mod:`.awq_screening`) is used when ``screen`` is set, the run has one process and
    the calibration set is large enough for it to pay. Otherwise, with ``attention`` set, an
    attention parent runs under fused attention where it applies (:func:`_attended_losses`).
    Losses are reported once, at the end, except on all tokens without fused attention, where
    they are reported as chunks finish when ``live``.
    """
    num_points = scales.shape[0]
    per_point = sum(orig_layer_weights[layer].numel() for layer in quantized)
    fused = all(fused_applies(layer, orig_layer_weights[layer], scales, quant_args_of(layer)) for layer in quantized)
    passes = _Passes(parent, quantized, orig_layer_weights, scales, device, per_point, fused,
                     cap_tokens=max((rows_and_tokens(b)[1] for b in batches), default=1))
    fused = fused and bool(quantized)
    masks = list(masks) if masks else None
    # one process only: across ranks the slice would depend on how the samples were split
    cuts = screening_cuts(batches, num_points) if screen and not is_distributed() else None
    attended = _fused_attention(parent, batches, fp16_outputs) if attention and cuts is None else None
    if attended is not None:
        losses, g, confirmed = _attended_losses(passes, attended, batches, fp16_outputs, masks)
        if on_points is not None:
            on_points(list(range(num_points)), losses)
        return losses, g, fused, confirmed, True, None
    if cuts is None:
        report = on_points if live else None
        cap_tokens = max(passes.cap_tokens, plain_pass_tokens(parent, batches, fp16_outputs, device))
        losses, g = passes.losses(list(range(num_points)), batches, fp16_outputs, masks, report=report,
                                  cap_tokens=cap_tokens)
        if on_points is not None and report is None:
            on_points(list(range(num_points)), losses)
        return losses, g, fused, None, False, None

    screen_batches = [cut_arguments(batches[c.batch], c.rows) for c in cuts]
    screen_refs = [fp16_outputs[c.batch][: c.rows] for c in cuts]
    screen_masks = [masks[c.batch][: c.rows] for c in cuts] if masks else None
    # its matrix products in bfloat16 where the CPU multiplies that in hardware (.screening_precision)
    low = screening_precision.SCREEN_DTYPE if screening_precision.applies(device, fp16_outputs[0].dtype) else None
    try:
        errors, g = passes.sample_errors(list(range(num_points)), screen_batches, screen_refs, screen_masks, low)
    except RuntimeError:
        if low is None:
            raise
        # a parent whose own code does not run with bfloat16 products (a dtype it insists on): in its own dtype
        low = None
        errors, g = passes.sample_errors(list(range(num_points)), screen_batches, screen_refs, screen_masks)
    confirmed = confirm(errors, lambda points: passes.losses(points, batches, fp16_outputs, masks)[0], grid)
    losses = estimated_losses([math.fsum(row) for row in errors], confirmed)
    if on_points is not None:
        on_points(list(range(num_points)), losses)
    screened_in = str(low or fp16_outputs[0].dtype).removeprefix("torch.")
    return losses, g, fused, tuple(sorted(confirmed)), False, screened_in


def _attended_losses(passes: "_Passes", attended: _Attended, batches: list[dict[str, Any]],
                     references: list[torch.Tensor], masks: list | None) -> tuple[list[float], int, tuple[int, ...]]:
    """Every point's loss under fused attention, then the points near the best again under eager
    attention (:func:`.search_attention.to_confirm`): those get stock's losses, the others keep
    their fused losses as estimates. Stock's choice is among the confirmed points as long as the
    two attentions' losses differ by less than half the confirmation margin."""
    num_points = passes.scales.shape[0]
    cap_tokens = max(passes.cap_tokens, fused_pass_tokens(attended.references, passes.device))
    estimates, g = passes.losses(list(range(num_points)), attended.batches, attended.references, masks,
                                 attention=attended.attention, cap_tokens=cap_tokens)
    todo = to_confirm(estimates)
    exact, _ = passes.losses(todo, batches, references, masks)
    losses = list(estimates)
    for point, loss in zip(todo, exact):
        losses[point] = loss
    return losses, g, tuple(todo)


class _Passes:
    """Runs the parent with the candidate weights of chosen grid points over chosen batches.

    The candidates made last are kept until others are needed: token screening confirms points
    whose candidates the screening pass made already (on a CPU, usually all 20 in one call).
    """

    def __init__(self, parent, quantized, orig_layer_weights, scales, device, per_point, fused, *, cap_tokens):
        self.parent, self.quantized, self.weights = parent, quantized, orig_layer_weights
        self.scales, self.device, self.cap_tokens = scales, device, cap_tokens
        self.q_max = points_quantized_together(scales.shape[0], per_point, device, fused=fused)
        self._kept: tuple[list[int], dict] = ([], {})
        # eager attention with its softmax in one pass on a GPU, a few samples at a time on a CPU, where
        # that is eager's (engine/lean_attention.py)
        self.lean = lean_attention.plan(parent, device)

    def _candidates(self, span: list[int]) -> dict[torch.nn.Module, torch.Tensor]:
        kept_points, kept = self._kept
        if kept and span == kept_points:
            return kept
        if kept and set(span) <= set(kept_points):
            where = [kept_points.index(p) for p in span]
            return {layer: _rows(c, where) for layer, c in kept.items()}
        self._kept = ([], {})  # the kept weights go before the next are made
        scales = _rows(self.scales, span)
        kept = {layer: quantize_candidates(layer, self.weights[layer], scales, quant_args_of(layer)) for layer in self.quantized}
        self._kept = (list(span), kept)
        return kept

    def chunk_size(self, n: int, batches: list[dict[str, Any]], cap_tokens: int | None = None) -> int:
        """Grid points per forward pass for ``n`` points over ``batches`` (at most ``cap_tokens``
        tokens per pass, by default the instance's), the same on every rank (the chunk size sets how
        many times the losses are all-reduced when read live)."""
        pass_tokens = max((rows_and_tokens(b)[1] for b in batches), default=1)
        cap = cap_tokens or self.cap_tokens
        return int(agree_min(min(self.q_max, points_per_pass(n, pass_tokens, self.device, cap))))

    def _outputs(self, points: list[int], batches: list[dict[str, Any]], references: list[torch.Tensor], g_max: int,
                 attention: FusedAttention | None = None, low: torch.dtype | None = None):
        """Per chunk of ``g_max`` grid points and calibration batch: ``(start, g, b, outputs)``, the
        parent's outputs for points ``points[start : start + g]`` over batch ``b``, shaped [g, *reference],
        under fused ``attention`` if given, with the matrix products in ``low`` if given
        (:mod:`.screening_precision`; the outputs then in ``low`` too)."""
        if attention is not None:
            active = attention.active
        else:
            active = self.lean.active if self.lean is not None else contextlib.nullcontext
        n = len(points)
        batches = [screening_precision.low_arguments(arguments, low) for arguments in batches]  # once, not per chunk
        quantized_from, candidates = -1, {}
        for start in range(0, n, g_max):
            g = min(g_max, n - start)
            if quantized_from < 0 or start + g > quantized_from + self.q_max:
                # candidate weights for the next q_max points, in one quantization call per layer
                candidates = {}  # the previous chunk's weights go before the next are made
                quantized_from = start
                candidates = self._candidates(points[start : start + self.q_max])
            offset = start - quantized_from
            weights = {layer: c[offset : offset + g].to(low or c.dtype) for layer, c in candidates.items()}
            for b, arguments in enumerate(batches):
                expanded, batch = repeat_batch(arguments, g)
                with candidate_forwards(weights, g), screening_precision.computing_in(low), active():
                    output = _first_output(self.parent(**expanded))
                reference = references[b]
                if output.shape[0] != g * batch or output.shape[1:] != reference.shape[1:]:
                    raise Unsupported("the parent's output does not keep the repeated batch")
                yield start, g, b, output.view(g, *reference.shape)
                del output, expanded
            del weights

    def losses(
        self,
        points: list[int],
        batches: list[dict[str, Any]],
        references: list[torch.Tensor],
        masks: list | None,
        *,
        report: Callable | None = None,
        attention: FusedAttention | None = None,
        cap_tokens: int | None = None,
    ) -> tuple[list[float], int]:
        """The stock loss of each of ``points`` over ``batches`` (all ranks' tokens), and the
        points per pass used. ``report(indices, losses)`` gets them chunk by chunk if given. Under
        fused ``attention`` (and its ``cap_tokens``) the same loss with another attention kernel."""
        n = len(points)
        sums = torch.zeros(n, dtype=torch.float32, device=self.device)
        elements = torch.zeros((), dtype=torch.int64, device=self.device)
        for b, reference in enumerate(references):
            mask = masks[b] if masks else None
            elements += int(reference[mask.to(reference.device) == 1].numel()) if mask is not None else reference.numel()

        g_max = self.chunk_size(n, batches, cap_tokens)
        reported, done = 0, []
        for start, g, b, outputs in self._outputs(points, batches, references, g_max, attention):
            reference = references[b]
            mask = masks[b] if masks else None
            token_mask = (mask.to(reference.device) == 1) if mask is not None else None
            ref = reference[token_mask] if token_mask is not None else reference
            for i in range(g):
                candidate = outputs[i][token_mask] if token_mask is not None else outputs[i]
                # added at once: the 0-dim result keeps the storage of the elementwise errors (as large as
                # the outputs) until it is freed; kept for a chunk, they raised SmolLM2's peak by 37% on the H200
                sums[start + i] += _squared_error_sum(ref, candidate.to(ref.device))
            if report is not None and b == len(batches) - 1:
                done = _read_losses(sums[: start + g], elements)
                report(points[reported : start + g], done[reported:])
                reported = start + g
        return (done if report is not None else _read_losses(sums, elements)), g_max

    def sample_errors(
        self, points: list[int], batches: list[dict[str, Any]], references: list[torch.Tensor], masks: list | None,
        low: torch.dtype | None = None,
    ) -> tuple[list[list[float]], int]:
        """``[point][sample]``: each calibration sample's summed squared output error (float32, loss
        mask applied), and the points per pass used. This process's samples only (screening runs in one).
        With ``low``, the parent's matrix products are in that dtype, and the references are the
        parent's outputs with the unquantized weights computed the same way (:mod:`.screening_precision`)."""
        if low is not None:
            references = self.low_references(batches, low)
        rows = [r.shape[0] for r in references]
        errors = torch.zeros(len(points), sum(rows), dtype=torch.float32, device=self.device)
        offsets = [sum(rows[:b]) for b in range(len(rows))]
        wide = [r.to(self.device).float() for r in references]  # once, not per chunk of points
        g_max = self.chunk_size(len(points), batches)
        for start, g, b, outputs in self._outputs(points, batches, references, g_max, low=low):
            squared = (outputs.float() - wide[b].unsqueeze(0)).pow(2)
            if masks:
                token_mask = (masks[b].to(outputs.device) == 1).to(squared.dtype)
                squared = squared * token_mask.view(1, *token_mask.shape, *([1] * (squared.dim() - 1 - token_mask.dim())))
            errors[start : start + g, offsets[b] : offsets[b] + rows[b]] = squared.flatten(2).sum(-1)
        return errors.tolist(), g_max

    def low_references(self, batches: list[dict[str, Any]], low: torch.dtype) -> list[torch.Tensor]:
        """The parent's output for each batch with the unquantized weights (rounded to ``low`` once for
        all batches), its matrix products in ``low``."""
        weights = {layer: self.weights[layer].unsqueeze(0).to(low) for layer in self.quantized}
        with candidate_forwards(weights, 1), screening_precision.computing_in(low):
            return [_first_output(self.parent(**screening_precision.low_arguments(arguments, low)))
                    for arguments in batches]


_SUM = torch.nn._reduction.get_enum("sum")


def _squared_error_sum(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """``F.mse_loss(reference, candidate, reduction="sum")``, the same kernel on the same tensors,
    without the Python wrapper's checks and broadcasting where the shapes are equal (one call per
    grid point and batch: about 20 ms of host time on SmolLM2 on the H200)."""
    if reference.shape != candidate.shape:
        return F.mse_loss(reference, candidate, reduction="sum")
    return torch._C._nn.mse_loss(reference, candidate, _SUM)


def _read_losses(sums: torch.Tensor, elements: torch.Tensor) -> list[float]:
    total, count = all_reduce([sums, elements])  # new tensors: the running sums stay this rank's
    return (total / count).tolist()


def _gram_losses(
    layer: torch.nn.Linear,
    weight: torch.Tensor,
    scales: torch.Tensor,
    batches: list[dict[str, Any]],
    masks: list | None,
    on_points: Callable | None,
    live: bool,
) -> list[float]:
    """Output error of a single Linear from the Gram matrix of its inputs: sum((E G) * E) / (N * out)."""
    in_features = weight.shape[1]
    gram = torch.zeros(in_features, in_features, dtype=torch.float32, device=weight.device)
    tokens = torch.zeros((), dtype=torch.int64, device=weight.device)
    for b, arguments in enumerate(batches):
        x = _first(arguments).reshape(-1, in_features)
        mask = masks[b] if masks else None
        if mask is not None:
            x = x[mask.to(x.device).reshape(-1) == 1]
        x = x.to(weight.device, torch.float32)
        gram.addmm_(x.T, x)
        tokens += x.shape[0]
    gram, tokens = all_reduce([gram, tokens])

    num_points = scales.shape[0]
    out_features = weight.shape[0]
    reference = weight.float()
    sums = torch.zeros(num_points, dtype=torch.float32, device=weight.device)
    args = quant_args_of(layer)
    step = points_quantized_together(num_points, weight.numel(), weight.device)
    reported = 0
    for start in range(0, num_points, step):
        chunk = list(range(start, min(start + step, num_points)))
        candidates = quantize_candidates(layer, weight, scales[chunk], args)
        for i, index in enumerate(chunk):
            error = candidates[i].float() - reference
            sums[index] = ((error @ gram) * error).sum()
        del candidates
        if live and on_points is not None:
            done = (sums[: chunk[-1] + 1] / (tokens * out_features)).tolist()
            on_points(list(range(reported, chunk[-1] + 1)), done[reported:])
            reported = chunk[-1] + 1
    losses = (sums / (tokens * out_features)).tolist()
    if on_points is not None and reported < num_points:
        on_points(list(range(reported, num_points)), losses[reported:])
    return [loss if math.isfinite(loss) else float("inf") for loss in losses]
