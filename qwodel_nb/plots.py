"""Matplotlib figures of the AWQ statistics of a run (a :class:`~qwodel_nb.engine.stats.Stats`).

Every function returns a :class:`matplotlib.figure.Figure` built with the object-oriented API
(no pyplot state: nothing leaks, works headless; notebooks display the returned figure):

* :func:`scale_distribution` - chosen scales per layer, one panel per mapping kind (log y)
* :func:`best_ratio` - the best grid ratio per layer; hollow markers where duo scaling was off
* :func:`loss_comparison` - round-to-nearest vs AWQ loss per layer and their ratio
* :func:`grid_curve` - the grid-search loss curves of one layer
* :func:`overview` - all of the above in one figure (what ``Session.plot()`` shows)

Colours (Okabe-Ito, colour-blind safe) and markers are fixed per mapping kind across figures.
matplotlib is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Sequence

from .engine.stats import KIND_ORDER

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .engine.stats import MappingRecord, Stats

__all__ = ["scale_distribution", "best_ratio", "loss_comparison", "grid_curve", "clip_effect", "overview", "figure_title",
           "KIND_COLORS", "KIND_MARKERS"]

KIND_COLORS = {
    "attention input": "#0072B2",      # blue
    "attention output": "#E69F00",     # orange
    "MLP input": "#009E73",            # bluish green
    "MLP down projection": "#D55E00",  # vermillion
    "other": "#CC79A7",                # reddish purple
}
KIND_MARKERS = {"attention input": "o", "attention output": "s", "MLP input": "^",
                "MLP down projection": "D", "other": "v"}
_GREY = "#555555"
_SUMMARY_KEYS = ("min", "q05", "q25", "q50", "q75", "q95", "max")
_MAX_WIDTH = 18.0
_MAX_HEIGHT = 20.0


# ---------------------------------------------------------------------------------------------
# shared helpers


def _require(stats: "Stats | None") -> None:
    if stats is None or len(stats) == 0:
        raise ValueError("no AWQ statistics to plot (no mapping was recorded: run AWQ with statistics "
                         "capture first, or load them with Stats.from_json)")


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, _MAX_WIDTH), min(height, _MAX_HEIGHT)), layout="constrained")


def _width(n_layers: int, lo: float = 8.0) -> float:
    return max(lo, min(_MAX_WIDTH, 6.0 + 0.15 * n_layers))


def _marker_size(n_layers: int) -> float:
    return max(2.5, min(7.0, 8.0 - n_layers / 10.0))


def _by_kind(stats: "Stats") -> dict[str, list["MappingRecord"]]:
    out: dict[str, list] = {k: [] for k in stats.kinds}
    for r in stats:
        out[r.kind].append(r)
    return {k: sorted(v, key=lambda r: (r.layer, r.index)) for k, v in out.items()}


def _positions(records: Sequence["MappingRecord"], span: float = 0.7) -> tuple[list[float], list[float]]:
    """x of each record (its layer, dodged when a layer holds several) and the width available to it."""
    counts: dict[int, int] = {}
    for r in records:
        counts[r.layer] = counts.get(r.layer, 0) + 1
    seen: dict[int, int] = {}
    xs, widths = [], []
    for r in records:
        m, j = counts[r.layer], seen.get(r.layer, 0)
        seen[r.layer] = j + 1
        xs.append(r.layer + (j - (m - 1) / 2) * span / m)
        widths.append(span / m)
    return xs, widths


def _layer_axis(ax: "Axes", layers: Sequence[int], max_ticks: int = 20, labels: bool = True) -> None:
    """Integer layer ticks, thinned to at most ``max_ticks``; minor ticks on every layer."""
    from matplotlib.ticker import MultipleLocator, NullLocator

    lo, hi = min(layers), max(layers)
    step = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if (hi - lo) / s < max_ticks), 1000)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_minor_locator(MultipleLocator(1) if step > 1 and hi - lo <= 200 else NullLocator())
    ax.set_xlim(lo - 0.7, hi + 0.7)
    ax.grid(True, axis="x", which="major", color="#dddddd", lw=0.6)
    ax.grid(True, axis="y", which="major", color="#eeeeee", lw=0.6)
    ax.set_axisbelow(True)
    if labels:
        ax.set_xlabel("decoder layer")
    else:
        ax.tick_params(labelbottom=False)


def _finite_positive(values: Iterable[float]) -> bool:
    return any(math.isfinite(v) and v > 0 for v in values)


def _kind_title(ax: "Axes", kind: str, text: str) -> None:
    ax.set_title(text, loc="left", color=KIND_COLORS.get(kind, _GREY), fontweight="bold", fontsize=10)


def _kind_handles(kinds: Iterable[str]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=KIND_COLORS[k], marker=KIND_MARKERS[k], ls="-", lw=1.2, label=k) for k in kinds]


def _extra_handles(*names: str) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    made = {
        "box": Patch(facecolor="#bbbbbb", edgecolor=_GREY,
                     label="scales: box q25-q75, whiskers q05-q95, bar median, dots min/max"),
        "rtn": Line2D([], [], color=_GREY, ls="--", lw=1.2, label="round-to-nearest loss"),
        "awq": Line2D([], [], color=_GREY, marker="o", ls="-", lw=1.4, label="AWQ best loss"),
        "duo": Line2D([], [], color=_GREY, marker="o", ls="", label="duo scaling on"),
        "noduo": Line2D([], [], color=_GREY, marker="o", ls="", markerfacecolor="white",
                        label="duo scaling off (ratio 0 = identity)"),
    }
    return [made[n] for n in names]


def _header(fig: "Figure", title: str, handles: list, width: float) -> None:
    """The figure title with the legend under it, above the panels.

    Constrained layout overlaps a suptitle and an outside legend, so the title is the legend's.
    """
    def fits(ncol: int) -> bool:  # columns as matplotlib fills them; ~0.075 in a character at 9 pt, 0.6 in a key
        rows, longer = divmod(len(handles), ncol)
        sizes = [rows + 1] * longer + [rows] * (ncol - longer)
        starts = [sum(sizes[:i]) for i in range(ncol)]
        cols = [handles[a:a + n] for a, n in zip(starts, sizes) if n]
        return sum(0.6 + 0.075 * max(len(h.get_label()) for h in col) for col in cols) <= min(width, _MAX_WIDTH) - 0.4

    ncol = next((n for n in range(len(handles), 1, -1) if fits(n)), 1)
    fig.legend(handles=handles, loc="outside upper center", ncol=ncol, frameon=False, fontsize=9,
               title=title, title_fontproperties={"weight": "bold", "size": 12})


def figure_title(fig: "Figure") -> str:
    """The title of a figure made here."""
    sup = getattr(fig, "_suptitle", None)  # Figure.get_suptitle() needs matplotlib 3.8
    if sup is not None and sup.get_text():
        return sup.get_text()
    return fig.legends[0].get_title().get_text() if fig.legends else ""


def _empty_note(ax: "Axes", text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=_GREY)


def _format_layers(layers: Sequence[int]) -> str:
    """``0-5, 7, 9-11``: runs of three or more as ranges."""
    runs: list[list[int]] = []
    for v in layers:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    parts = []
    for run in runs:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ", ".join(map(str, run)))
    return ", ".join(parts)


def _point(ratio: float, duo: bool) -> str:
    if ratio == 0 and not duo:
        return "identity"
    return f"ratio {ratio:.2f}" + ("" if duo else " no duo")


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------
# panels (draw into an existing Axes)


def _draw_scales(ax: "Axes", kind: str, records: Sequence["MappingRecord"]) -> None:
    color = KIND_COLORS[kind]
    xs, widths = _positions(records)
    rows = [(x, min(w, 0.5), r.scale_summary) for x, w, r in zip(xs, widths, records)
            if all(k in r.scale_summary for k in _SUMMARY_KEYS)
            and _finite_positive([r.scale_summary["min"], r.scale_summary["max"]])]
    if not rows:
        _empty_note(ax, "no scale summaries recorded")
        return
    x = [t[0] for t in rows]
    w = [t[1] for t in rows]
    s = {k: [t[2][k] for t in rows] for k in _SUMMARY_KEYS}
    ax.vlines(x, s["q05"], s["q95"], color=color, lw=1.0, zorder=2)
    ax.bar(x, [b - a for a, b in zip(s["q25"], s["q75"])], bottom=s["q25"], width=[0.8 * v for v in w],
           color=color, alpha=0.35, edgecolor=color, lw=0.8, zorder=3)
    ax.hlines(s["q50"], [a - 0.4 * b for a, b in zip(x, w)], [a + 0.4 * b for a, b in zip(x, w)],
              color="black", lw=1.3, zorder=4)
    dot = max(1.5, 12.0 - 0.12 * len(set(r.layer for r in records)))
    ax.scatter(x + x, s["min"] + s["max"], s=dot, color=color, edgecolors="none", zorder=4)
    ax.axhline(1.0, color=_GREY, lw=0.7, ls=":", zorder=1)
    ax.set_yscale("log")
    ax.set_ylabel("scale (x, log)")


def _draw_losses(ax: "Axes", kind: str, records: Sequence["MappingRecord"], ms: float) -> None:
    color, marker = KIND_COLORS[kind], KIND_MARKERS[kind]
    xs, _ = _positions(records)
    rtn = [r.rtn_loss for r in records]
    best = [r.best_loss for r in records]
    if not _finite_positive(rtn + best):
        _empty_note(ax, "no positive losses recorded")
        return
    ax.fill_between(xs, best, rtn, color=color, alpha=0.15, lw=0, zorder=1)
    ax.plot(xs, rtn, color=color, ls="--", lw=1.1, zorder=2)
    ax.plot(xs, best, color=color, ls="-", lw=1.4, marker=marker, ms=ms, zorder=3)
    ax.set_yscale("log")
    ax.set_ylabel("loss (output MSE, log)")


def _draw_reduction(ax: "Axes", by_kind: dict[str, list["MappingRecord"]], ms: float) -> None:
    top = 1.0
    for i, (kind, records) in enumerate(by_kind.items()):
        dodge = (i - (len(by_kind) - 1) / 2) * 0.12
        xs = [x + dodge for x in _positions(records)[0]]
        red = [r.reduction for r in records]
        top = max([top] + [v for v in red if math.isfinite(v)])
        ax.plot(xs, red, color=KIND_COLORS[kind], lw=0.8, alpha=0.45, zorder=2)
        ax.plot(xs, red, color=KIND_COLORS[kind], marker=KIND_MARKERS[kind], ms=ms + 0.5, ls="", zorder=3)
    ax.axhline(1.0, color=_GREY, lw=0.8, ls=":")
    ax.set_ylim(0.0, top * 1.05)
    ax.set_ylabel("AWQ / RTN loss\n(1 = no gain)")


def _draw_best_ratio(ax: "Axes", by_kind: dict[str, list["MappingRecord"]], ms: float) -> None:
    kinds = list(by_kind)
    for i, kind in enumerate(kinds):
        records = by_kind[kind]
        color, marker = KIND_COLORS[kind], KIND_MARKERS[kind]
        dodge = (i - (len(kinds) - 1) / 2) * 0.12  # kinds side by side inside a layer slot
        xs = [x + dodge for x in _positions(records)[0]]
        ys = [r.best_ratio for r in records]
        ax.plot(xs, ys, color=color, lw=0.8, alpha=0.45, zorder=2)
        for duo, face in ((True, color), (False, "white")):
            pts = [(x, y) for x, y, r in zip(xs, ys, records) if bool(r.duo_scaling) == duo]
            if pts:
                ax.plot(*zip(*pts), ls="", marker=marker, ms=ms + 0.5, color=color, markerfacecolor=face,
                        markeredgewidth=1.1, zorder=3)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("best ratio (0 - 1)")


def _draw_grid(ax: "Axes", record: "MappingRecord", title: str | None = None) -> None:
    color, marker = KIND_COLORS[record.kind], KIND_MARKERS[record.kind]
    pts = [(r, bool(d), v) for r, d, v in zip(record.grid_ratios, record.grid_duo, record.grid_losses)
           if math.isfinite(v)]
    if title is None:
        title = f"{record.kind}\n{_short(record.smooth_layer)} \u2192 " + ", ".join(map(_short, record.balance_layers))
    ax.set_title(title, loc="left", fontsize=9, color=color, fontweight="bold")
    ax.set_xlabel("grid ratio")
    ax.set_ylabel("loss (output MSE)")
    ax.grid(True, color="#eeeeee", lw=0.6)
    ax.set_axisbelow(True)
    if not pts:
        _empty_note(ax, "no grid losses recorded")
        return
    for duo in (True, False):
        series = sorted((r, v) for r, d, v in pts if d == duo)
        if not series:
            continue
        label = "duo scaling on" if duo else ("duo scaling off" if len(series) > 1 else "identity (duo off)")
        ax.plot(*zip(*series), color=color if duo else _GREY, ls="-" if duo else "--", lw=1.3,
                marker=marker if duo else "o", ms=4.5, markerfacecolor=None if duo else "white", label=label)
    estimated = [(r, v) for r, v, e in zip(record.grid_ratios, record.grid_losses, record.exact_points)
                 if not e and math.isfinite(v)]
    if estimated:  # token screening (a slice of the tokens) or fused attention (not confirmed) estimated these
        ax.plot(*zip(*estimated), ls="", marker="o", ms=6.5, markerfacecolor="white", markeredgecolor=_GREY,
                markeredgewidth=1.0, zorder=4, label="estimated (not confirmed)", gid="estimated")
    if math.isfinite(record.rtn_loss):
        ax.axhline(record.rtn_loss, color="black", ls=":", lw=1.0, label=f"RTN (identity) {record.rtn_loss:.3g}")
    chosen = ax.scatter([record.best_ratio], [record.best_loss], marker="*", s=190, color="#F0E442",
                        edgecolors="black", linewidths=0.9, zorder=5,
                        label=f"chosen: {_point(record.best_ratio, record.duo_scaling)}, "
                              f"{record.reduction:.0%} of RTN")
    chosen.set_gid("chosen")
    losses = [v for _, _, v in pts if v > 0]
    if losses and max(losses) / min(losses) > 30:
        ax.set_yscale("log")
        ax.set_ylabel("loss (output MSE, log)")
    else:  # plain numbers: an offset text (1e-5) would collide with the title
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlim(-0.05, 1.05)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85)


# ---------------------------------------------------------------------------------------------
# figures


def scale_distribution(stats: "Stats") -> "Figure":
    """Distribution of the chosen AWQ scales per layer (from the summaries), one panel per kind."""
    _require(stats)
    by_kind, layers = _by_kind(stats), stats.layers
    width = _width(len(layers))
    fig = _figure(width, 1.0 + 2.1 * len(by_kind))
    axes = fig.subplots(len(by_kind), 1, squeeze=False)[:, 0]
    for i, (ax, (kind, records)) in enumerate(zip(axes, by_kind.items())):
        _draw_scales(ax, kind, records)
        _layer_axis(ax, layers, labels=i == len(axes) - 1)
        _kind_title(ax, kind, f"{kind} ({len(records)} mappings)")
    _header(fig, "Chosen AWQ scales per layer", _extra_handles("box"), width)
    return fig


def best_ratio(stats: "Stats") -> "Figure":
    """The best grid ratio per layer, one series per kind; hollow markers: duo scaling off."""
    _require(stats)
    by_kind, layers = _by_kind(stats), stats.layers
    width = _width(len(layers))
    fig = _figure(width, 4.4)
    ax = fig.add_subplot()
    _draw_best_ratio(ax, by_kind, _marker_size(len(layers)))
    _layer_axis(ax, layers)
    ax.set_title("ratio 0: weight statistics only (identity without duo scaling); 1: activation statistics only",
                 loc="left", fontsize=9, color=_GREY)
    _header(fig, "Best AWQ grid ratio per layer", _kind_handles(by_kind) + _extra_handles("duo", "noduo"), width)
    return fig


def loss_comparison(stats: "Stats") -> "Figure":
    """Round-to-nearest vs AWQ best loss per layer (one panel per kind), then their ratio."""
    _require(stats)
    by_kind, layers = _by_kind(stats), stats.layers
    width, ms = _width(len(layers)), _marker_size(len(layers))
    fig = _figure(width, 1.2 + 2.0 * (len(by_kind) + 1))
    axes = fig.subplots(len(by_kind) + 1, 1, squeeze=False)[:, 0]
    for ax, (kind, records) in zip(axes, by_kind.items()):
        _draw_losses(ax, kind, records, ms)
        _layer_axis(ax, layers, labels=False)
        _kind_title(ax, kind, kind)
    _draw_reduction(axes[-1], by_kind, ms)
    _layer_axis(axes[-1], layers)
    axes[-1].set_title("AWQ loss relative to round-to-nearest (lower is better)", loc="left", fontsize=10)
    mean = stats.overview()["mean_reduction"]
    _header(fig, f"Round-to-nearest vs AWQ loss per layer (mean AWQ/RTN {mean:.3f})",
            _kind_handles(by_kind) + _extra_handles("rtn", "awq"), width)
    return fig


def _worst(stats: "Stats") -> "MappingRecord":
    finite = [r for r in stats if math.isfinite(r.rtn_loss)]
    return max(finite or list(stats), key=lambda r: r.rtn_loss if math.isfinite(r.rtn_loss) else -math.inf)


def _layer_records(stats: "Stats", layer: int, kind: str | None) -> list["MappingRecord"]:
    if layer not in stats.layers:
        raise ValueError(f"layer {layer!r} is not in these statistics; valid layers: {_format_layers(stats.layers)}")
    records = stats.for_layer(layer)
    if kind is not None:
        kinds = sorted({r.kind for r in records}, key=KIND_ORDER.index)
        records = [r for r in records if r.kind.lower() == kind.lower()]
        if not records:
            raise ValueError(f"layer {layer} has no {kind!r} mapping; its kinds: {', '.join(kinds)}")
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(records, key=lambda r: (order[r.kind], r.index))


def grid_curve(stats: "Stats", layer: int | None = None, kind: str | None = None) -> "Figure":
    """Grid-search loss vs ratio of the mappings of one layer (default: the largest RTN loss).

    One panel per mapping (``kind`` keeps one kind), duo scaling on/off as separate series,
    the chosen point starred and the round-to-nearest (identity) loss as a dotted line.
    """
    _require(stats)
    default = layer is None
    if default:
        layer = _worst(stats).layer
    records = _layer_records(stats, layer, kind)
    cols = min(len(records), 4)
    rows = math.ceil(len(records) / cols)
    fig = _figure(1.0 + 4.2 * cols, 0.9 + 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, record in zip(axes, records):
        _draw_grid(ax, record)
    for ax in axes[len(records):]:
        ax.remove()
    note = " (largest round-to-nearest loss)" if default else ""
    fig.suptitle(f"AWQ grid search, layer {layer}{note}", fontweight="bold")
    return fig


_CLIP_COLORS = {"v_proj": "#0072B2", "o_proj": "#E69F00", "gate_proj": "#009E73", "up_proj": "#56B4E9",
                "down_proj": "#D55E00"}


def clip_effect(stats: "Stats") -> "Figure":
    """The clipping search per layer: output error removed (top) and how much was clipped (bottom)."""
    if stats is None or not getattr(stats, "clips", None):
        from .engine.errors import StateError

        raise StateError("This run has no clipping statistics; they come with clip='search' (the default).")
    import matplotlib.lines as mlines

    layers = sorted({c.layer for c in stats.clips})
    width, ms = _width(len(layers)), _marker_size(len(layers))
    fig = _figure(width, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    by_name: dict[str, list] = {}
    for c in stats.clips:
        by_name.setdefault(c.name.rsplit(".", 1)[-1], []).append(c)
    handles = []
    for short, records in by_name.items():
        color = _CLIP_COLORS.get(short, "#CC79A7")
        xs = [c.layer for c in records]
        top.plot(xs, [100 * (1 - c.reduction) for c in records], "o-", color=color, ms=ms, lw=1)
        bottom.plot(xs, [100 * c.clipped_share for c in records], "o-", color=color, ms=ms, lw=1)
        handles.append(mlines.Line2D([], [], color=color, marker="o", label=short))
    top.set_ylabel("error removed (%)")
    top.set_title("per-group output error after clipping, relative to plain min-max ranges", loc="left", fontsize=10)
    bottom.set_ylabel("groups clipped (%)")
    bottom.set_title("share of weight groups whose range was shrunk", loc="left", fontsize=10)
    _layer_axis(top, layers, labels=False)
    _layer_axis(bottom, layers)
    mean = 100 * (1 - sum(c.reduction for c in stats.clips) / len(stats.clips))
    _header(fig, f"Weight clipping per layer (mean error removed {mean:.1f}%)", handles, width)
    return fig


def overview(stats: "Stats") -> "Figure":
    """Scales, losses, best ratios and the worst layer's grid curves in one figure."""
    _require(stats)
    by_kind, layers = _by_kind(stats), stats.layers
    n_kinds, ms = len(by_kind), _marker_size(len(layers))
    worst = _worst(stats)
    # the worst layer's grid curves, at most four (the largest RTN losses) to stay readable
    grid_records = _layer_records(stats, worst.layer, None)
    keep = sorted(grid_records, key=lambda r: -r.rtn_loss if math.isfinite(r.rtn_loss) else 0.0)[:4]
    grid_records = [r for r in grid_records if any(r is k for k in keep)]
    width = _width(len(layers), lo=13.0)
    fig = _figure(width, 2.6 + 1.9 * n_kinds + 2.4 + 3.4)
    gs = fig.add_gridspec(n_kinds + 2, 2, height_ratios=[1.0] * n_kinds + [1.25, 1.8])

    # no sharex: the layer axes get identical limits anyway, and sharing slows constrained layout down
    left = [fig.add_subplot(gs[i, 0]) for i in range(n_kinds + 1)]
    right = [fig.add_subplot(gs[i, 1]) for i in range(n_kinds + 1)]
    for i, (kind, records) in enumerate(by_kind.items()):
        _draw_scales(left[i], kind, records)
        _kind_title(left[i], kind, f"{kind}: chosen scales")
        _draw_losses(right[i], kind, records, ms)
        _kind_title(right[i], kind, f"{kind}: RTN (dashed) vs AWQ loss")
    _draw_best_ratio(left[-1], by_kind, ms)
    left[-1].set_title("best grid ratio (hollow: duo scaling off)", loc="left", fontsize=10)
    _draw_reduction(right[-1], by_kind, ms)
    right[-1].set_title("AWQ loss / RTN loss (lower is better)", loc="left", fontsize=10)
    for col in (left, right):
        for i, ax in enumerate(col):
            _layer_axis(ax, layers, max_ticks=12, labels=i == len(col) - 1)

    sub = gs[n_kinds + 1, :].subgridspec(1, max(len(grid_records), 2))
    for j, record in enumerate(grid_records):
        _draw_grid(fig.add_subplot(sub[0, j]), record, title=f"grid search, layer {record.layer}\n{record.kind}")

    o = stats.overview()
    title = (f"AWQ statistics: {o['mappings']} mappings over {o['layers']} layers, mean AWQ/RTN loss "
             f"{o['mean_reduction']:.3f} ({1 - o['mean_reduction']:.0%} lower), identity kept for "
             f"{o['identity_chosen']} mapping{'' if o['identity_chosen'] == 1 else 's'}")
    _header(fig, title, _kind_handles(by_kind) + _extra_handles("box", "rtn", "awq", "noduo"), width)
    return fig
