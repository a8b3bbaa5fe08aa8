"""Plain-text reports of a VRAM probe, a plan and a result, for the CLI and text reprs."""

from __future__ import annotations

from .model_info import TORCH_DTYPE_BYTES
from .pipeline_cache import fits_on_gpu
from .plan import Plan
from .run import RunResult
from .vram import VramReport, format_bytes


def format_vram(report: VramReport) -> str:
    if not report.has_gpu:
        return f"No GPU: {report.reason}. Calibration runs on the CPU (small models only)."
    lines = ["GPU  name                              total       used        free"]
    for g in report.gpus:
        lines.append(
            f"{g.index:<4} {g.name[:32]:<33} {format_bytes(g.total_bytes):>10}  {format_bytes(g.used_bytes):>10}  "
            f"{format_bytes(g.free_bytes):>10}"
        )
    return "\n".join(lines)


def format_plan(plan: Plan) -> str:
    m = plan.model
    c = plan.calibration
    lines = [
        f"model        {m.source} ({m.class_name}, {m.param_count / 1e6:.1f}M parameters, {m.num_layers} layers, {m.dtype})",
        f"device       {plan.device}: {plan.placement}; compute in {plan.compute_dtype}, save in {plan.save_dtype}",
        f"headroom     {format_bytes(plan.headroom_bytes) if plan.headroom_bytes is not None else 'n/a'} ({plan.headroom_reason})",
        f"calibration  {plan.raw_calibration.description}: {len(plan.raw_calibration)} usable rows",
        f"num_samples  {c.num_samples.describe()}",
        f"seq_len      {c.seq_len.describe()}",
        f"batch_size   {c.batch_size.describe()}",
        f"scheme       W4A16 {'symmetric' if plan.settings.symmetric else 'asymmetric'}, group size "
        f"{plan.layout.group_size} ({plan.layout.group_size_reason})",
        f"layers       {len(plan.layout.quantized)} quantized; kept in 16 bits: {', '.join(plan.layout.skipped) or 'none'}",
        f"ignore       {', '.join(plan.layout.ignore)} ({plan.layout.ignore_source})",
        f"AWQ mappings {plan.layout.mappings.source}; scale search: {plan.settings.awq_search}; clip: {plan.settings.clip}",
        f"output       {plan.output_path} (about {format_bytes(plan.est_output_bytes)}, from {format_bytes(m.weight_bytes)})",
    ]
    if plan.gpus > 1:
        lines.insert(2, f"processes    {plan.gpus} under torchrun, one GPU each; {gpus_text(plan)}")
    if plan.output_note:
        lines.append(f"warning      {plan.output_note}")
    if plan.est_peak_gpu_bytes is not None:
        lines.append(f"peak GPU     {peak_gpu_text(plan)}")
    ram = ram_text(plan)
    if ram:
        lines.append(f"CPU memory   {ram}")
    if plan.token is not None:
        lines.append(f"token        *** (from {plan.token.source})")
    return "\n".join(lines)


def peak_gpu_text(plan: Plan) -> str:
    """The estimated GPU peak, and where the pipeline keeps the layer inputs between layers."""
    if plan.layer_inputs_on_gpu:
        where = "on the GPU"
    elif not plan.gpus_used:
        where = "on the CPU (the GPU's free memory is unknown)"
    elif fits_on_gpu(plan.layer_inputs_bytes, min(g.free_bytes for g in plan.gpus_used), plan.est_peak_gpu_bytes):
        where = "on the CPU (moved there after the GPU ran out of memory)"
    else:
        where = "on the CPU (they would take more than half of the GPU memory spare beyond the peak)"
    return (f"about {format_bytes(plan.est_peak_gpu_bytes)} (estimate); layer inputs "
            f"({format_bytes(plan.layer_inputs_bytes)}) kept {where}")


def gpus_text(plan: Plan) -> str:
    """Every GPU a distributed run uses, with its free memory and this model's headroom on it."""
    share = f"each calibrates on about {-(-plan.num_samples // plan.gpus)} of the {plan.num_samples} samples"
    if not plan.gpus_used:
        return share
    weights = plan.model.param_count * TORCH_DTYPE_BYTES.get(plan.compute_dtype, 2)
    whole = plan.placement.startswith("whole model")
    parts = []
    for g in plan.gpus_used:
        left = g.free_bytes - (weights if whole else 0)
        parts.append(f"GPU {g.index} {g.name}: {format_bytes(g.free_bytes)} free, {format_bytes(max(left, 0))} headroom")
    return share + "; " + "; ".join(parts)


def ram_text(plan: Plan) -> str | None:
    """Host memory the plan needs at most, against what is available; None if not estimated."""
    if plan.est_ram is None:
        return None
    text = f"at most {plan.est_ram.describe()}"
    if plan.available_ram_bytes is not None:
        text += f"; {format_bytes(plan.available_ram_bytes)} available"
        if plan.est_ram.total > plan.available_ram_bytes:
            text += " (may not fit: checked again with the real token count before any weight is loaded)"
    return text


def backoff_text(steps: list) -> str | None:
    """The out-of-memory back-off steps of a run, in one line; None if there were none."""
    if not steps:
        return None
    return "; ".join(f"{s['setting']} {s['old']} -> {s['new']}" for s in steps) + " (after running out of GPU memory)"


def format_result(result: RunResult) -> str:
    t = result.timings
    cal = result.calibration
    lines = [
        f"output       {result.output_path}",
        f"calibrated   {cal['samples']} samples, {cal['tokens_used']} tokens in {cal['batches']} batches of up to {cal['batch_size']}"
        + (f" (batch size {cal['batch_note']})" if cal.get("batch_note") else ""),
        f"time         total {t['total_s']:.1f} s (AWQ {t['awq_s']:.1f} s, load {t['load_model_s']:.1f} s, save {t['save_s']:.1f} s)",
        f"size         {format_bytes(result.size_before_bytes)} -> {format_bytes(result.size_after_bytes)} "
        f"({result.compression_ratio:.2f}x smaller)",
    ]
    if result.peak_gpu_bytes is not None:
        lines.append(f"peak GPU     {format_bytes(result.peak_gpu_bytes)}")
    lines.append(f"peak RAM     {format_bytes(result.peak_rss_bytes)}")
    backoff = backoff_text(result.backoff)
    if backoff:
        lines.append(f"backed off   {backoff}")
    return "\n".join(lines)


def vllm_snippet(path: str) -> str:
    return (
        "from vllm import LLM, SamplingParams\n"
        f"llm = LLM(model={path!r})  # compressed-tensors W4A16 is detected from config.json\n"
        "print(llm.generate(['Hello, my name is'], SamplingParams(max_tokens=32))[0].outputs[0].text)"
    )
