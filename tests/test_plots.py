"""Figures of qwodel_nb.plots from synthetic AWQ statistics (no model, no GPU)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from qwodel_nb import plots
from qwodel_nb.engine.stats import MappingRecord, Stats, summarize

# llm-compressor's grid with duo_scaling=True: the identity (0, False), then ratios i/18 with duo scaling.
GRID = [(0.0, False)] + [(i / 18, True) for i in range(19)]

_MAPPINGS = (  # (kind, smooth layer, balance layers, loss scale)
    ("attention input", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), 1e-4),
    ("attention output", "self_attn.v_proj", ("self_attn.o_proj",), 3e-6),
    ("MLP input", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), 2e-4),
    ("MLP down projection", "mlp.up_proj", ("mlp.down_proj",), 5e-5),
)


def _record(rng, index: int, layer: int, n_layers: int, mapping, with_vectors: bool) -> MappingRecord:
    kind, smooth, balance, scale = mapping
    depth = layer / max(n_layers - 1, 1)
    rtn = scale * (1 + 4 * depth**2) * rng.lognormal(0, 0.3)
    if kind == "MLP down projection" and layer >= n_layers - 2:
        rtn *= 20  # outlier-heavy last layers
    # a convex curve over the duo-scaling ratios; now and then nothing beats the identity
    gain = 1.3 if rng.random() < 0.1 else rng.uniform(0.35, 0.95)
    center, curvature = rng.uniform(0.2, 0.7), rng.uniform(1, 6)
    losses = [rtn] + [rtn * gain * (1 + curvature * (r - center) ** 2) * rng.uniform(0.99, 1.01) for r, _ in GRID[1:]]
    best = int(np.argmin(losses))
    channels = 64
    scales = rng.lognormal(0, 0.4 + 0.6 * depth, channels) * rng.uniform(0.5, 2)
    acts = np.abs(rng.normal(0, 1, channels)) * (1 + 10 * (rng.random(channels) < 0.03))
    prefix = f"model.layers.{layer}."
    return MappingRecord(
        index=index, layer=layer, smooth_layer=prefix + smooth, balance_layers=tuple(prefix + b for b in balance),
        parent=prefix + balance[0].split(".")[0], best_ratio=GRID[best][0], duo_scaling=GRID[best][1],
        rtn_loss=float(losses[0]), best_loss=float(losses[best]), grid_ratios=tuple(r for r, _ in GRID),
        grid_duo=tuple(d for _, d in GRID), grid_losses=tuple(float(v) for v in losses),
        scale_summary=summarize(scales), activation_summary=summarize(acts),
        scales=scales if with_vectors else None, activation_means=acts if with_vectors else None,
    )


def make_stats(n_layers: int, seed: int = 0) -> Stats:
    """Four mappings a layer; attention output skipped on every third layer (as grouped-query attention does)."""
    rng = np.random.default_rng(seed)
    records = []
    for layer in range(n_layers):
        for mapping in _MAPPINGS:
            if mapping[0] == "attention output" and layer % 3 == 2:
                continue
            records.append(_record(rng, len(records), layer, n_layers, mapping, with_vectors=layer % 2 == 0))
    return Stats(records)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def _texts(fig) -> list[str]:
    out = [plots.figure_title(fig)]
    for ax in fig.axes:
        out += [ax.get_title(loc) for loc in ("left", "center", "right")]
    return [t for t in out if t]


@pytest.fixture(scope="module", params=[2, 40, 80], ids=lambda n: f"{n}layers")
def stats(request) -> Stats:
    return make_stats(request.param)


def _worst_layer(stats: Stats) -> int:
    return max(stats, key=lambda r: r.rtn_loss).layer


def test_builder_is_realistic():
    s = make_stats(6)
    assert s.layers == list(range(6)) and s.kinds == list(plots.KIND_COLORS)[:4]
    assert len(s.for_layer(2)) == 3 and len(s.for_layer(0)) == 4
    assert {r.scales is None for r in s} == {True, False}
    for r in s:
        assert len(r.grid_losses) == 20 and r.grid_losses[0] == r.rtn_loss > 0
        assert r.best_loss == min(r.grid_losses) and 0 < r.reduction <= 1


def test_scale_distribution(stats):
    from matplotlib.figure import Figure

    fig = plots.scale_distribution(stats)
    assert isinstance(fig, Figure) and len(fig.axes) == len(stats.kinds) == 4
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert fig.axes[-1].get_xlabel() == "decoder layer" and all(ax.get_ylabel() for ax in fig.axes)
    assert "attention output" in " ".join(_texts(fig))
    _png(fig)


def test_best_ratio(stats):
    fig = plots.best_ratio(stats)
    (ax,) = fig.axes
    assert ax.get_ylim()[0] < 0 <= 1 < ax.get_ylim()[1]
    assert plots.figure_title(fig) and ax.get_title(loc="left") and ax.get_xlabel() and ax.get_ylabel()
    # hollow markers exactly where duo scaling was off
    hollow = sum(len(line.get_xdata()) for line in ax.lines if line.get_markerfacecolor() in ("white", (1, 1, 1, 1)))
    assert hollow == sum(not r.duo_scaling for r in stats)
    assert fig.legends
    _png(fig)


def test_loss_comparison(stats):
    fig = plots.loss_comparison(stats)
    assert len(fig.axes) == len(stats.kinds) + 1
    assert all(ax.get_yscale() == "log" for ax in fig.axes[:-1]) and fig.axes[-1].get_yscale() == "linear"
    assert "round-to-nearest" in plots.figure_title(fig).lower()
    assert all(ax.get_ylabel() for ax in fig.axes)
    _png(fig)


def test_grid_curve_default_is_worst_layer(stats):
    worst = _worst_layer(stats)
    fig = plots.grid_curve(stats)
    assert f"layer {worst} " in plots.figure_title(fig)
    records = sorted(stats.for_layer(worst), key=lambda r: plots.KIND_ORDER.index(r.kind))
    assert len(fig.axes) == len(records)
    for ax, record in zip(fig.axes, records):
        (star,) = [c for c in ax.collections if c.get_gid() == "chosen"]
        assert np.allclose(star.get_offsets()[0], [record.best_ratio, record.best_loss])
        rtn_lines = [line for line in ax.lines if list(line.get_ydata()) == [record.rtn_loss] * 2]
        assert rtn_lines, "RTN level missing"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "duo scaling on" in labels and "identity (duo off)" in labels
        assert ax.get_xlabel() == "grid ratio" and ax.get_ylabel()
    _png(fig)


def test_grid_curve_layer_and_kind(stats):
    fig = plots.grid_curve(stats, layer=0, kind="mlp down projection")  # any case
    assert len(fig.axes) == 1 and "MLP down projection" in fig.axes[0].get_title(loc="left")
    _png(fig)


def test_grid_curve_both_duo_series():
    s = make_stats(2)
    r = s[0]
    r.grid_ratios = tuple(i / 9 for i in range(10)) * 2
    r.grid_duo = (False,) * 10 + (True,) * 10
    r.grid_losses = tuple(r.rtn_loss * (1 + (i % 10 - 4) ** 2 / 50) * (0.9 if i >= 10 else 1) for i in range(20))
    fig = plots.grid_curve(s, layer=0, kind=r.kind)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "duo scaling on" in labels and "duo scaling off" in labels
    _png(fig)


def test_grid_curve_marks_screening_estimates():
    s = make_stats(2)
    r = s[0]
    exact = [False] * 20
    for i in (5, 6, 7, 8):
        exact[i] = True
    r.grid_exact = tuple(exact)
    fig = plots.grid_curve(s, layer=0, kind=r.kind)
    ax = fig.axes[0]
    (hollow,) = [line for line in ax.lines if line.get_gid() == "estimated"]
    assert len(hollow.get_xdata()) == 16  # the sixteen points screening did not evaluate in full
    assert "estimated (not confirmed)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plain = plots.grid_curve(make_stats(2), layer=0, kind=r.kind)  # no estimates: no such marks
    assert not [line for line in plain.axes[0].lines if line.get_gid() == "estimated"]
    _png(fig)


def test_bad_layer_and_kind():
    s = make_stats(40)
    with pytest.raises(ValueError, match=r"layer 41 .*valid layers: 0-39"):
        plots.grid_curve(s, layer=41)
    with pytest.raises(ValueError, match=r"valid layers: 0, 1$"):
        plots.grid_curve(make_stats(2), layer=5)
    with pytest.raises(ValueError, match="its kinds: attention input, MLP input, MLP down projection"):
        plots.grid_curve(s, layer=2, kind="attention output")


@pytest.mark.parametrize("fn", ["scale_distribution", "best_ratio", "loss_comparison", "grid_curve", "overview"])
def test_empty_stats(fn):
    with pytest.raises(ValueError, match="^no AWQ statistics to plot"):
        getattr(plots, fn)(Stats())


def test_overview(stats):
    fig = plots.overview(stats)
    kinds, worst = len(stats.kinds), _worst_layer(stats)
    assert len(fig.axes) == 2 * kinds + 2 + len(stats.for_layer(worst))
    title = plots.figure_title(fig)
    assert f"{len(stats)} mappings over {len(stats.layers)} layers" in title and "mean AWQ/RTN loss" in title
    assert all(ax.get_title(loc="left") for ax in fig.axes)
    w, h = fig.get_size_inches()
    assert w <= 18 and h <= 20
    if len(stats.layers) in (2, 40):  # kept for a look by eye
        path = f"/tmp/plots_overview_{len(stats.layers)}.png"
        fig.savefig(path, dpi=100)
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        _png(fig)


def test_odd_records_render():
    """Summaries missing, an unknown kind, several mappings of one kind in a layer, layer -1."""
    s = make_stats(3)
    s.records[0].scale_summary = {}
    extra = make_stats(1, seed=5).records
    for i, r in enumerate(extra[:2]):
        r.balance_layers = (f"model.layers.1.block.mixer{i}",)
        r.layer = 1
    extra[2].layer = -1
    s.records += extra[:3]
    assert "other" in s.kinds
    for fn in (plots.scale_distribution, plots.best_ratio, plots.loss_comparison, plots.grid_curve):
        assert fn(s).axes
    _png(plots.overview(s))  # draws every panel kind


def test_import_is_cheap_and_pyplot_free():
    code = ("import sys, qwodel_nb.plots as p; assert 'matplotlib' not in sys.modules, 'eager import'; "
            "from tests.test_plots import make_stats; p.best_ratio(make_stats(3)).savefig('/dev/null', format='png'); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot used'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_overview_keeps_four_grid_panels():
    s = make_stats(2)
    worst = max(s, key=lambda r: r.rtn_loss)
    for i in range(3):  # three more mappings in the worst layer, all with smaller RTN losses
        extra = make_stats(1, seed=i + 1).records[0]
        extra.layer, extra.balance_layers, extra.rtn_loss = worst.layer, (f"x.mixer{i}",), worst.rtn_loss / 10
        s.records.append(extra)
    fig = plots.overview(s)
    assert len(fig.axes) == 2 * len(s.kinds) + 2 + 4
    assert any(worst.kind in ax.get_title(loc="left") for ax in fig.axes[-4:])
