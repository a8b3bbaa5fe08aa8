"""The plan of a run: every setting resolved, with reasons, before any weight is loaded.

Data flows one way: settings -> plan -> calibration samples -> AWQ run -> output. A plan holds
what was read from the model (config, module tree, safetensors headers), the GPU memory, the
layer layout (ignore list, group size, AWQ mappings), the calibration source's usable rows and
the calibration settings from the headroom table, each with the reason it was chosen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import autoconfig
from .calibration import RawCalibration, read_source
from .errors import OutputError, QwodelError, SettingsError
from .layout import Layout, plan_layout
from .model_info import ModelInfo, TORCH_DTYPE_BYTES, inspect_model
from .output import check_output
from .pipeline_cache import fits_on_gpu, layer_inputs_bytes
from .resources import RamEstimate, available_ram_bytes, check_disk, free_disk_bytes, plan_ram
from .secrets import Secret, resolve_token
from .settings import Settings
from .vram import VramReport, probe

# Kept free on the GPU beyond the weights for activations, CUDA context and allocator slack.
GPU_RESERVE_BYTES = 2 * 1024**3


@dataclass
class Plan:
    settings: Settings
    token: Secret | None = field(repr=False)
    output_path: str | None
    model: ModelInfo
    vram: VramReport
    device: str  # "cuda" or "cpu"
    compute_dtype: str
    save_dtype: str
    placement: str  # how the weights sit during calibration
    headroom_bytes: int | None
    headroom_reason: str
    layout: Layout
    raw_calibration: RawCalibration
    calibration: autoconfig.CalibrationConfig
    est_output_bytes: int
    est_peak_gpu_bytes: int | None
    output_note: str | None = None  # why run() would refuse this output folder, when it would
    est_ram: RamEstimate | None = None  # host memory at most (num_samples x seq_len tokens)
    available_ram_bytes: int | None = None
    free_disk_bytes: int | None = None
    # the sequential pipeline's cache of each layer's inputs (engine/pipeline_cache.py): its size
    # for one process's samples, and whether it is kept on the GPU (else on the CPU)
    layer_inputs_bytes: int = 0
    layer_inputs_on_gpu: bool = False

    @property
    def gpus(self) -> int:
        """Processes (one GPU each) the run uses; more than one runs under torchrun."""
        return self.settings.gpus

    @property
    def gpus_used(self) -> tuple:
        """The GPUs the run calibrates on (torch's indices), with what NVML read of each."""
        if self.device != "cuda":
            return ()
        return tuple(self.vram.gpus[: self.gpus])

    @property
    def batch_size(self) -> int:
        return self.calibration.batch_size.value

    @property
    def seq_len(self) -> int:
        return self.calibration.seq_len.value

    @property
    def num_samples(self) -> int:
        return self.calibration.num_samples.value

    def as_dict(self) -> dict:
        """Plain values for the summary JSON and for display (never the token)."""
        m = self.model
        return {
            "model": {
                "source": m.source,
                "class": m.class_name,
                "model_type": m.model_type,
                "parameters": m.param_count,
                "layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "max_positions": m.max_positions,
                "stored_dtype": m.dtype,
                "weight_bytes": m.weight_bytes,
                "weight_bytes_source": m.weight_bytes_source,
            },
            "device": self.device,
            "compute_dtype": self.compute_dtype,
            "save_dtype": self.save_dtype,
            "placement": self.placement,
            "headroom_bytes": self.headroom_bytes,
            "headroom_reason": self.headroom_reason,
            "gpus": [
                {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes}
                for g in self.vram.gpus
            ],
            "processes": self.gpus,
            "gpus_used": [g.index for g in self.gpus_used],
            "samples_per_process": -(-self.num_samples // self.gpus),
            "calibration": self.calibration.as_dict()
            | {"source": self.raw_calibration.description, "usable_rows": len(self.raw_calibration)},
            "group_size": self.layout.group_size,
            "group_size_reason": self.layout.group_size_reason,
            "symmetric": self.settings.symmetric,
            "awq_search": self.settings.awq_search,
            "clip": self.settings.clip,
            "ignore": list(self.layout.ignore),
            "ignore_source": self.layout.ignore_source,
            "quantized_layers": len(self.layout.quantized),
            "unquantized_linear_layers": list(self.layout.skipped),
            "awq_mappings": self.layout.mappings.source,
            "output": self.output_path,
            "output_note": self.output_note,
            "estimated_output_bytes": self.est_output_bytes,
            "estimated_peak_gpu_bytes": self.est_peak_gpu_bytes,
            "layer_inputs": {"bytes": self.layer_inputs_bytes, "on": "gpu" if self.layer_inputs_on_gpu else "cpu"},
            "estimated_peak_ram_bytes": self.est_ram.total if self.est_ram else None,
            "estimated_peak_ram_parts": dict(self.est_ram.parts) if self.est_ram else None,
            "available_ram_bytes": self.available_ram_bytes,
            "free_disk_bytes": self.free_disk_bytes,
            "token": None if self.token is None else f"*** (from {self.token.source})",
        }


def _compute_device(settings: Settings, vram: VramReport) -> str:
    import torch

    accelerator = torch.cuda.is_available()
    if settings.device == "cpu":
        if accelerator:
            raise SettingsError(
                "device='cpu' on a machine with a visible GPU: llm-compressor always calibrates on the GPU it sees; "
                "start Python with CUDA_VISIBLE_DEVICES='' to force the CPU."
            )
        return "cpu"
    if settings.device == "cuda" and not accelerator:
        reason = vram.reason or "torch sees no CUDA device"
        raise SettingsError(f"device='cuda' but no GPU is usable ({reason}); use device='auto' to run on the CPU.")
    return "cuda" if accelerator else "cpu"


def _dtypes(settings: Settings, info: ModelInfo, device: str) -> tuple[str, str]:
    """(dtype the model computes in during calibration, dtype of the saved unquantized tensors)."""
    stored = info.dtype if info.dtype in TORCH_DTYPE_BYTES else "bfloat16"
    if settings.dtype != "auto":
        return settings.dtype, settings.dtype
    if device == "cpu":
        # 16-bit matrix products are slow on most CPUs; compute in float32, save as stored.
        return "float32", stored
    return (stored if stored != "float64" else "bfloat16"), stored


def estimate_output_bytes(info: ModelInfo, layout: Layout, symmetric: bool, save_dtype: str) -> int:
    """Packed 4-bit weights + scales (+ zero points) for quantized layers; the rest at ``save_dtype``."""
    per = TORCH_DTYPE_BYTES.get(save_dtype, 2)
    quantized = set(layout.quantized)
    q_params = 0
    q_bytes = 0
    g = layout.group_size
    for layer in info.linear_layers:
        if layer.name not in quantized:
            continue
        n = layer.in_features * layer.out_features
        groups = n // g
        q_params += n
        q_bytes += n // 2 + groups * per + (0 if symmetric else groups // 2)
    return q_bytes + (info.param_count - q_params) * per


def gpu_headroom(
    vram: VramReport, info: ModelInfo, device: str, compute_dtype: str, gpus: int = 1
) -> tuple[int | None, str, str]:
    """Headroom of the calibration GPU; with several GPUs, of the one with the least free memory
    among those used (each process holds its own copy of the weights and calibrates alike)."""
    if device == "cpu":
        why = vram.reason or "no GPU"
        return None, f"no GPU ({why}): CPU row of the table", "CPU" if gpus == 1 else f"CPU, {gpus} processes"
    used = vram.gpus[:gpus]
    if not used or len(used) < gpus:  # torch sees GPUs that NVML cannot read (rare); assume nothing is known
        return None, "GPU memory unreadable through NVML: CPU row of the table", "GPU, weights on CPU, one layer on the GPU at a time"
    gpu = min(used, key=lambda g: (g.free_bytes, g.index))
    on = f"GPU {gpu.index}" if gpus == 1 else f"each of GPUs {', '.join(str(g.index) for g in used)}"
    which = (f"GPU {gpu.index} ({gpu.name})" if gpus == 1
             else f"GPU {gpu.index} ({gpu.name}), the fullest of the {gpus} used,")
    weights = info.param_count * TORCH_DTYPE_BYTES.get(compute_dtype, 2)
    if weights + GPU_RESERVE_BYTES <= gpu.free_bytes:
        return (
            gpu.free_bytes - weights,
            f"{which} has {gpu.free_bytes / 1024**3:.1f} GB free; "
            f"the weights take {weights / 1024**3:.1f} GB of it",
            f"whole model on {on}",
        )
    layer = int(info.largest_layer_bytes * TORCH_DTYPE_BYTES.get(compute_dtype, 2) / max(info.dtype_bytes, 1))
    return (
        max(gpu.free_bytes - layer, 0),
        f"{which} has {gpu.free_bytes / 1024**3:.1f} GB free, too little for the "
        f"{weights / 1024**3:.1f} GB of weights; layers are onloaded one at a time ({layer / 1024**3:.2f} GB each)",
        f"weights on CPU, one layer at a time on {on}",
    )


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype the model calibrates, and the GPU headroom that leaves."""

    device: str
    compute_dtype: str
    save_dtype: str
    headroom_bytes: int | None
    headroom_reason: str
    placement: str


def check_gpus(settings: Settings, device: str) -> None:
    """``gpus`` > 1 needs that many CUDA devices (or the gloo backend of the CPU rehearsal)."""
    if settings.gpus == 1:
        return
    from .ranks import requested_backend

    if requested_backend() == "gloo":
        return
    import torch

    count = torch.cuda.device_count() if device == "cuda" else 0
    if count < settings.gpus:
        seen = f"torch sees {count} CUDA device{'s' if count != 1 else ''}"
        raise SettingsError(
            f"gpus={settings.gpus} needs {settings.gpus} CUDA GPUs but {seen}; set gpus to at most {max(count, 1)} "
            "(or check CUDA_VISIBLE_DEVICES)."
        )


def resolve_placement(settings: Settings, info: ModelInfo, vram: VramReport) -> Placement:
    device = _compute_device(settings, vram)
    check_gpus(settings, device)
    compute_dtype, save_dtype = _dtypes(settings, info, device)
    headroom, reason, placement = gpu_headroom(vram, info, device, compute_dtype, settings.gpus)
    return Placement(device, compute_dtype, save_dtype, headroom, reason, placement)


def estimate_peak_gpu(info: ModelInfo, placement: str, compute_dtype: str, batch: int, seq: int, samples: int) -> int:
    """An estimate of the peak allocated GPU memory of a run, from the model's shapes.

    Resident weights (the whole model, or the largest layer when layers are onloaded one at a
    time), AWQ's copy of one layer's original weights, its reference and quantized outputs of one
    parent module over all samples, one batch's activations through the MLP, and one batch of
    logits. On SmolLM2-135M (16 x 512 tokens, one H200) the measured peak was 325 MiB
    (bench/GPU_CHECK.md); this gives 336 MiB.
    """
    per = TORCH_DTYPE_BYTES.get(compute_dtype, 2)
    text = info.config.get_text_config()
    hidden = info.hidden_size or 4096
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    vocab = getattr(text, "vocab_size", None) or 0
    layer = int(info.largest_layer_bytes * per / max(info.dtype_bytes, 1))
    weights = info.param_count * per if placement.startswith("whole") else layer
    cached_outputs = 2 * samples * seq * hidden * per  # reference + quantized outputs of one parent module
    one_batch = batch * seq * (3 * inter + 4 * hidden) * per
    logits = batch * seq * vocab * per
    return weights + layer + cached_outputs + one_batch + logits


def make_plan(
    settings: Settings,
    *,
    require_output: bool = True,
    vram: VramReport | None = None,
    model_info: ModelInfo | None = None,
    raw_calibration: RawCalibration | None = None,
) -> Plan:
    """Resolve ``settings`` into a :class:`Plan`; raises a :class:`QwodelError` on any bad input.

    ``vram``, ``model_info`` and ``raw_calibration`` may be passed in when already known (a
    Session caches them); otherwise they are read here.
    """
    output, output_note = None, None
    try:
        output = check_output(settings.output, settings.overwrite) if (require_output or settings.output) else None
    except OutputError as exc:
        if require_output:
            raise
        # A plan only looks: report what run() would refuse instead of refusing to plan.
        output, output_note = os.path.abspath(os.path.expanduser(settings.output)), exc.message
    token = resolve_token(settings.token)
    info = model_info or inspect_model(settings.model, token, settings.trust_remote_code)
    layout = plan_layout(info, settings.ignore, settings.group_size, settings.mappings)
    vram = vram if vram is not None else probe()
    where = resolve_placement(settings, info, vram)
    device, compute_dtype, save_dtype = where.device, where.compute_dtype, where.save_dtype
    headroom, headroom_reason, placement = where.headroom_bytes, where.headroom_reason, where.placement
    raw = raw_calibration or read_source(settings.calibration_dataset, settings.calibration_split, settings.text_column, token)
    if len(raw) == 0:
        from .errors import CalibrationDataError

        raise CalibrationDataError(f"Calibration {raw.description} has no non-empty text; give other data.")
    calibration = autoconfig.resolve(
        headroom,
        settings.batch_size,
        settings.seq_len,
        settings.num_samples,
        max_positions=info.max_positions,
        available_samples=len(raw),
    )
    est_out = estimate_output_bytes(info, layout, settings.symmetric, save_dtype)
    free_disk = None
    if output is not None:
        free_disk = free_disk_bytes(output)
        if output_note is None:
            try:
                check_disk(output, est_out)
            except QwodelError as exc:
                if require_output:
                    raise
                output_note = exc.message
    peak = None
    per_process = -(-calibration.num_samples.value // settings.gpus)  # each process caches its share
    seq = calibration.seq_len.value
    inputs = layer_inputs_bytes(info.config, TORCH_DTYPE_BYTES.get(compute_dtype, 2), per_process * seq, seq)
    inputs_on_gpu = False
    if device == "cuda":
        peak = estimate_peak_gpu(
            info, placement, compute_dtype, calibration.batch_size.value, calibration.seq_len.value, per_process
        )
        free = min((g.free_bytes for g in vram.gpus[: settings.gpus]), default=None)
        inputs_on_gpu = fits_on_gpu(inputs, free, peak)
        if inputs_on_gpu:
            peak += inputs
    plan = Plan(
        settings=settings,
        token=token,
        output_path=output,
        output_note=output_note,
        model=info,
        vram=vram,
        device=device,
        compute_dtype=compute_dtype,
        save_dtype=save_dtype,
        placement=placement,
        headroom_bytes=headroom,
        headroom_reason=headroom_reason,
        layout=layout,
        raw_calibration=raw,
        calibration=calibration,
        est_output_bytes=est_out,
        est_peak_gpu_bytes=peak,
        free_disk_bytes=free_disk,
        available_ram_bytes=available_ram_bytes(),
        layer_inputs_bytes=inputs,
        layer_inputs_on_gpu=inputs_on_gpu,
    )
    plan.est_ram = plan_ram(plan)
    return plan
