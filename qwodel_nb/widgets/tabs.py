"""The panel's read-only tabs: VRAM, plan, calibration preview and results.

Each tab is a refresh button (or a finished run) and a rendering of what the Session returns.
The HTML comes from :mod:`qwodel_nb.display`, the same views a notebook shows for
``s.vram()``, ``s.plan()``, ``s.preview()`` and ``s.result``, so the panel and the Python API
look alike. Figures are PNG bytes in an ``Image`` widget: that needs no inline matplotlib
backend and no ``with output:`` block (whose output lands in the wrong cell when written from a
thread under ipykernel 7).
"""

from __future__ import annotations

import html
import io
from typing import Any, Callable

import ipywidgets as w

from .common import COLORS, message_html, show

PLOT_KINDS = (("overview", "overview"), ("scales per layer", "scales"), ("best grid ratio", "ratios"),
              ("round-to-nearest vs AWQ loss", "losses"), ("grid search of the worst layer", "grid"),
              ("weight clipping per layer", "clip"))


def _note(text: str) -> str:
    return (f"<div style='font-family:system-ui,sans-serif;font-size:13px;color:{COLORS['muted']};margin:6px 0'>"
            f"{html.escape(text)}</div>")


class RefreshTab:
    """A button that asks the session for something, a message line and the HTML it got back."""

    def __init__(self, button: str, empty: str, *controls: w.Widget):
        self.refresh = w.Button(description=button, icon="refresh", layout=w.Layout(width="150px"))
        self.message = w.HTML("")
        self.view = w.HTML(_note(empty))
        self.widget = w.VBox([w.HBox([self.refresh, *controls]), self.message, self.view])

    def show_html(self, markup: str) -> None:
        self.message.value = ""
        self.view.value = markup

    def show_error(self, text: str) -> None:
        self.message.value = message_html(text)


class VramTab(RefreshTab):
    """A bar per GPU with its free memory, this model's headroom, and the table row it selects."""

    def __init__(self):
        super().__init__("Refresh", "Set a model to see the GPUs and this model's headroom.")
        self.row = w.HTML("")
        self.widget.children = tuple(self.widget.children) + (self.row,)

    def show_vram(self, view: Any) -> None:
        self.show_html(view._repr_html_())
        row = view.table_row()
        if row is None:
            self.row.value = _note("The settings table row is unknown until the model can be read.")
            return
        why, (batch, seq, samples) = row
        lead = "No GPU: CPU settings" if not view.report.has_gpu else "Settings table"
        self.row.value = (f"<div style='font-family:system-ui,sans-serif;font-size:13px;margin:6px 0'><b>{lead}</b> "
                          f"<span style='color:{COLORS['muted']}'>({html.escape(why)})</span>: "
                          f"batch_size {batch}, seq_len {seq}, num_samples {samples} where set to auto</div>")


class PlanTab(RefreshTab):
    def __init__(self):
        super().__init__("Make plan", "Every setting resolved with its reason, before any weight is loaded.")


class PreviewTab(RefreshTab):
    """Calibration samples as the model will see them, and the summary of the whole set."""

    def __init__(self, rows: int = 5):
        self.rows = w.BoundedIntText(value=rows, min=0, max=1000, description="samples shown",
                                     style={"description_width": "initial"}, layout=w.Layout(width="200px"))
        super().__init__("Preview", "Tokenizes the calibration data as the run will; loads no weights.", self.rows)


class ResultsTab:
    """The result summary with the vLLM snippet (``s.result``'s own view) and the statistics plots."""

    def __init__(self):
        self.placeholder = w.HTML(_note("No finished run yet."))
        self.summary = w.HTML("")
        self.plot_kind = w.Dropdown(options=list(PLOT_KINDS), value="overview", description="plot",
                                    layout=w.Layout(width="380px"))
        self.plot = w.Image(format="png", layout=w.Layout(max_width="860px"))
        self.plot_message = w.HTML("")
        self.widget = w.VBox([self.placeholder])
        self._render: Callable[[str], Any] | None = None
        self.plot_kind.observe(lambda change: self._draw(change["new"]), "value")

    def show(self, result: Any, render: Callable[[str], Any]) -> None:
        """Fill the tab from a finished result; ``render(kind)`` returns a matplotlib Figure."""
        self._render = render
        self.summary.value = result._repr_html_()
        self.widget.children = (self.summary, self.plot_kind, self.plot_message, self.plot)
        self._draw(self.plot_kind.value)

    def clear(self) -> None:
        self._render = None
        self.widget.children = (self.placeholder,)

    def _draw(self, kind: str) -> None:
        if self._render is None:
            return
        try:
            figure = self._render(kind)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=90)
            self.plot.value = buffer.getvalue()
            self.plot_message.value = ""
            show(self.plot, True)
        except Exception as exc:  # noqa: BLE001 - e.g. no statistics recorded: say so, keep the rest
            self.plot_message.value = message_html(f"No {kind} plot: {getattr(exc, 'message', None) or exc}", "warning")
            show(self.plot, False)
