"""HTML and plain-text representations of what a Session shows.

Each view wraps engine data and renders it twice: ``_repr_html_`` for notebooks (Jupyter, Colab
and VS Code call it) and ``__str__``/``__repr__`` for terminals and nbval's ``text/plain``
comparisons. Nothing here imports IPython: notebooks find these methods by name.
"""

from __future__ import annotations

import html
from typing import Any

from .engine.autoconfig import table_row
from .engine.calibration import CalibrationSet
from .engine.plan import Placement, Plan
from .engine.report import backoff_text, format_plan, format_vram, peak_gpu_text, ram_text
from .engine.vram import VramReport, format_bytes

_STYLE = (
    "<style>.qwodel{font-family:system-ui,sans-serif;font-size:13px}"
    ".qwodel table{border-collapse:collapse;margin:4px 0}"
    ".qwodel td,.qwodel th{padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #ddd}"
    ".qwodel .bar{background:#e6e6e6;width:240px;height:12px;position:relative;border-radius:2px}"
    ".qwodel .used{background:#999;height:12px;position:absolute;left:0;top:0}"
    ".qwodel .model{background:#0072B2;height:12px;position:absolute;top:0}"
    ".qwodel .muted{color:#666}.qwodel pre{white-space:pre-wrap;margin:0;font-size:12px}</style>"
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: list[tuple[str, str]], raw: bool = False) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v if raw else _e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


class VramView:
    """GPUs with their memory, and the headroom this model leaves on the calibration GPU."""

    def __init__(self, report: VramReport, placement: Placement | None, note: str | None = None):
        self.report = report
        self.placement = placement
        self.note = note

    @property
    def headroom_bytes(self) -> int | None:
        return self.placement.headroom_bytes if self.placement else None

    def table_row(self) -> tuple[str, tuple[int, int, int]] | None:
        """The headroom table's row: (why, (batch_size, seq_len, num_samples)), before any cap.

        None while the headroom is unknown (a GPU, but the model could not be read).
        """
        if self.placement is None:
            return table_row(None) if not self.report.has_gpu else None
        return table_row(self.placement.headroom_bytes)

    def __str__(self) -> str:
        lines = [format_vram(self.report)]
        if self.placement is not None:
            p = self.placement
            if p.headroom_bytes is None:
                lines.append(f"CPU settings: {p.headroom_reason}.")
            else:
                lines.append(f"Headroom for this model: {format_bytes(p.headroom_bytes)} ({p.headroom_reason}); {p.placement}.")
        elif self.note:
            lines.append(f"Headroom unknown: {self.note}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        parts = [_STYLE, "<div class='qwodel'>"]
        if not self.report.has_gpu:
            parts.append(f"<b>No GPU</b> <span class='muted'>({_e(self.report.reason)})</span>: "
                         "calibration runs on the CPU, with the CPU row of the settings table.")
        else:
            rows = ["<tr><th>GPU</th><th>name</th><th>memory</th><th>free</th></tr>"]
            model_bytes = 0
            if self.placement is not None and self.placement.headroom_bytes is not None:
                first = self.report.gpus[0]
                model_bytes = max(first.free_bytes - self.placement.headroom_bytes, 0)
            for g in self.report.gpus:
                used = 100 * g.used_bytes / g.total_bytes if g.total_bytes else 0
                model = 100 * model_bytes / g.total_bytes if (g.index == 0 and g.total_bytes) else 0
                bar = (f"<div class='bar' title='used {format_bytes(g.used_bytes)} of {format_bytes(g.total_bytes)}'>"
                       f"<div class='used' style='width:{used:.1f}%'></div>"
                       f"<div class='model' style='left:{used:.1f}%;width:{min(model, 100 - used):.1f}%'></div></div>")
                rows.append(f"<tr><td>{g.index}</td><td>{_e(g.name)}</td><td>{bar}</td><td>{_e(format_bytes(g.free_bytes))}</td></tr>")
            parts.append("<table>" + "".join(rows) + "</table>")
            parts.append("<span class='muted'>grey: in use; blue: this model's weights during calibration</span><br>")
        if self.placement is not None and self.placement.headroom_bytes is not None:
            parts.append(f"Headroom for this model: <b>{_e(format_bytes(self.placement.headroom_bytes))}</b> "
                         f"<span class='muted'>({_e(self.placement.headroom_reason)}; {_e(self.placement.placement)})</span>")
        elif self.note:
            parts.append(f"<br>Headroom unknown: {_e(self.note)}")
        parts.append("</div>")
        return "".join(parts)


class PlanView:
    """The resolved plan: settings with reasons and what was read from the model."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def __getattr__(self, name: str) -> Any:  # plan fields read through: view.num_samples, view.layout...
        if name == "plan":
            raise AttributeError(name)
        return getattr(self.plan, name)

    def as_dict(self) -> dict:
        return self.plan.as_dict()

    def __str__(self) -> str:
        return format_plan(self.plan)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        p = self.plan
        m = p.model
        c = p.calibration

        def choice(ch) -> str:
            tag = "you" if ch.source == "you" else "auto"
            caps = "".join(f"<br><span class='muted'>{_e(cap)}</span>" for cap in ch.caps)
            return f"<b>{ch.value}</b> <span class='muted'>[{tag}: {_e(ch.reason)}]</span>{caps}"

        model_rows = [
            ("model", f"{m.source}"),
            ("architecture", f"{m.class_name} ({m.model_type})"),
            ("parameters", f"{m.param_count / 1e6:,.1f} M in {m.num_layers} layers, stored as {m.dtype}"),
            ("weights", f"{format_bytes(m.weight_bytes)} ({m.weight_bytes_source})"),
            ("AWQ mappings", f"{p.layout.mappings.source}; scale search: {p.settings.awq_search}; clip: {p.settings.clip}"),
        ]
        run_rows = [
            ("device", f"{p.device}: {p.placement}; compute {p.compute_dtype}, save {p.save_dtype}"),
            ("headroom", f"{format_bytes(p.headroom_bytes) if p.headroom_bytes is not None else 'n/a'} ({p.headroom_reason})"),
            ("num_samples", choice(c.num_samples)),
            ("seq_len", choice(c.seq_len)),
            ("batch_size", choice(c.batch_size)),
            ("calibration", _e(f"{p.raw_calibration.description}: {len(p.raw_calibration)} usable rows")),
            ("scheme", _e(f"W4A16 {'symmetric' if p.settings.symmetric else 'asymmetric'}, group size {p.layout.group_size}")
             + f"<br><span class='muted'>{_e(p.layout.group_size_reason)}</span>"),
            ("ignore", _e(f"{', '.join(p.layout.ignore)} ({p.layout.ignore_source}); kept in 16 bits: "
                          f"{', '.join(p.layout.skipped) or 'none'}")),
            ("output", _e(f"{p.output_path or '(not set)'}, about {format_bytes(p.est_output_bytes)}")),
        ]
        if p.output_note:
            run_rows.append(("warning", f"<b style='color:#D55E00'>{_e(p.output_note)}</b>"))
        if p.est_peak_gpu_bytes is not None:
            run_rows.append(("peak GPU", _e(peak_gpu_text(p))))
        if ram_text(p):
            run_rows.append(("CPU memory", _e(ram_text(p))))
        return (f"{_STYLE}<div class='qwodel'><b>Plan</b>{_table(model_rows)}"
                f"{_table(run_rows, raw=True)}</div>")


class CalibrationPreview:
    """The first samples as the model will see them, and a summary of the whole set."""

    def __init__(self, calibration: CalibrationSet, n: int = 5):
        self.calibration = calibration
        self.n = n

    @property
    def samples(self):
        return self.calibration.samples[: self.n]

    @property
    def summary(self) -> dict:
        return self.calibration.summary()

    def _summary_line(self) -> str:
        s = self.summary
        return (f"{s['samples']} samples from {s['source']}: {s['tokens']} tokens "
                f"(min {s['min_tokens']}, median {s['median_tokens']}, max {s['max_tokens']}; "
                f"{s['truncated']} truncated to {s['seq_len']}), {s['batches']} batches of up to {s['batch_size']}, "
                f"{s['dropped_by_batching']} tokens dropped by batching"
                + (f"; batch size {s['batch_note']}" if s.get("batch_note") else ""))

    def __str__(self) -> str:
        lines = [self._summary_line()]
        for i, sample in enumerate(self.samples):
            text = " ".join(sample.text.split())
            short = text if len(text) <= 200 else text[:197] + "..."
            flag = ", truncated" if sample.truncated else ""
            lines.append(f"[{i}] {sample.num_tokens} tokens{flag}: {short}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = ["<tr><th>#</th><th>tokens</th><th>text as the model sees it</th></tr>"]
        for i, sample in enumerate(self.samples):
            text = sample.text if len(sample.text) <= 1200 else sample.text[:1200] + " ..."
            flag = f"{sample.num_tokens}" + (f"<br><span class='muted'>truncated from {sample.source_tokens}</span>"
                                             if sample.truncated else "")
            rows.append(f"<tr><td>{i}</td><td>{flag}</td><td><pre>{_e(text)}</pre></td></tr>")
        lengths = sorted(self.calibration.lengths)
        histogram = _length_histogram(lengths, self.calibration.seq_len)
        return (f"{_STYLE}<div class='qwodel'><b>Calibration</b> {_e(self._summary_line())}"
                f"{histogram}<table>{''.join(rows)}</table></div>")


def _length_histogram(lengths: list[int], seq_len: int, bins: int = 16) -> str:
    """A small inline bar chart of sample lengths (HTML only, no plotting library)."""
    if not lengths:
        return ""
    width = max(seq_len // bins, 1)
    counts = [0] * bins
    for n in lengths:
        counts[min((n - 1) // width, bins - 1)] += 1
    top = max(counts)
    bars = "".join(
        f"<div title='{i * width + 1}-{(i + 1) * width} tokens: {c}' style='display:inline-block;width:10px;"
        f"margin-right:1px;background:#0072B2;height:{max(1, 40 * c // top) if c else 0}px'></div>"
        for i, c in enumerate(counts)
    )
    return (f"<div style='height:42px;display:flex;align-items:flex-end'>{bars}</div>"
            f"<span class='muted'>sample lengths, 1 to {seq_len} tokens</span>")


class ResultView:
    """A finished run: where, how long, how big, how good, and how to serve it."""

    def __init__(self, result: Any):
        self.result = result

    def _rows(self) -> list[tuple[str, str]]:
        r = self.result
        t = r.timings
        phases = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in t.items() if k != "total_s")
        rows = [
            ("output", r.output_path),
            ("time", f"{t.get('total_s', 0):.1f} s ({phases})"),
            ("size", f"{format_bytes(r.size_before_bytes)} -> {format_bytes(r.size_after_bytes)} "
                     f"({r.compression_ratio:.2f}x smaller)"),
            ("peak GPU memory", format_bytes(r.peak_gpu_bytes) if r.peak_gpu_bytes is not None else "no GPU"),
            ("peak RAM", format_bytes(r.peak_rss_bytes)),
            ("calibration", f"{r.calibration['samples']} samples, {r.calibration['tokens_used']} tokens in "
                            f"{r.calibration['batches']} batches of up to {r.calibration['batch_size']}"
                            + (f" (batch size {r.calibration['batch_note']})" if r.calibration.get("batch_note") else "")),
            ("AWQ", repr(r.stats)),
        ]
        if backoff_text(getattr(r, "backoff", None)):
            rows.append(("backed off", backoff_text(r.backoff)))
        if r.perplexity:
            rows.append(("perplexity", ", ".join(f"{k} {v:.3f}" for k, v in r.perplexity.items())))
        if r.layer_errors:
            worst = max(range(len(r.layer_errors)), key=r.layer_errors.__getitem__)
            rows.append(("layer output error", f"max {r.layer_errors[worst]:.4f} at layer {worst}, "
                                               f"last {r.layer_errors[-1]:.4f}"))
        return rows

    def __str__(self) -> str:
        lines = [f"{k:<20}{v}" for k, v in self._rows()]
        lines.append("serve with vLLM:\n" + self.result.vllm_snippet)
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return (f"{_STYLE}<div class='qwodel'><b>Result</b>{_table(self._rows())}"
                f"<b>Serve it with vLLM</b><pre>{_e(self.result.vllm_snippet)}</pre></div>")
