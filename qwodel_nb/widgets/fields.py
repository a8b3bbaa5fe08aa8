"""The settings form: one row per setting, a message line under each, "auto" toggles with hints.

The form only holds what the user typed. It turns that into Session options (:meth:`options`)
and shows the messages it is given (:meth:`show_errors`); judging the values is the engine's
job (:mod:`qwodel_nb.widgets.validation`), so the panel, the magic and the CLI say the same
thing about the same mistake.

Text fields sync on blur or Enter (``continuous_update=False``), not on every keystroke: each
change is checked at once, and a check may read a model's config.json or a calibration file.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as w

from ..engine.secrets import Secret
from ..engine.settings import DEFAULT_CALIBRATION, SUPPORTED_GROUP_SIZES, Settings, describe_calibration_source
from .common import COLORS, FIELD_WIDTH, LABEL_WIDTH, label, message_html, show

#: the settings the form edits, in the order of their rows; other settings pass through unchanged
FORM_FIELDS = ("model", "output", "calibration_dataset", "calibration_split", "num_samples", "seq_len",
               "batch_size", "group_size", "ignore", "symmetric", "clip", "awq_search", "text_column", "overwrite",
               "token")
AUTO_FIELDS = ("num_samples", "seq_len", "batch_size")


class Row:
    """A labelled input with a one-line message under it (shown only when there is one)."""

    def __init__(self, name: str, title: str, control: w.Widget, *extra: w.Widget):
        self.name = name
        self.control = control
        self.message = w.HTML("")
        self.error = ""
        show(self.message, False)
        indent = w.HTML("", layout=w.Layout(width=LABEL_WIDTH, min_width=LABEL_WIDTH))
        self.widget = w.VBox([w.HBox([label(title), control, *extra]), w.HBox([indent, self.message])])

    def set_message(self, text: str) -> None:
        self.error = text or ""
        self.message.value = message_html(self.error)
        show(self.message, bool(self.error))

    def set_enabled(self, enabled: bool) -> None:
        self.control.disabled = not enabled


class TextRow(Row):
    """A text setting; an empty field means "not set" (the engine's default applies)."""

    def __init__(self, name: str, title: str, placeholder: str = "", width: str = FIELD_WIDTH):
        control = w.Text(placeholder=placeholder, continuous_update=False, layout=w.Layout(width=width))
        super().__init__(name, title, control)

    def value(self) -> str | None:
        text = self.control.value.strip()
        return text or None

    def load(self, value: Any) -> None:
        if isinstance(value, (list, tuple)):  # the ignore list: names and patterns, comma separated
            value = ", ".join(map(str, value))
        self.control.value = "" if value is None else str(value)


class CalibrationRow(TextRow):
    """The calibration source: text, or data passed in from Python (a list of texts, a Dataset).

    Data given as an object cannot be typed into a text field; the field shows its description
    and the object is kept for as long as the field still shows that description.
    """

    def __init__(self):
        super().__init__("calibration_dataset", "calibration data",
                         f"hub id, repo:subset, or a .json/.jsonl/.txt file (empty: {DEFAULT_CALIBRATION})")
        self._object: tuple[str, Any] | None = None

    def load(self, value: Any) -> None:
        if value is None or isinstance(value, str):
            self._object = None
            super().load(value)
        else:
            self._object = (describe_calibration_source(value), value)
            self.control.value = self._object[0]

    def value(self) -> Any:
        text = self.control.value.strip()
        if self._object is not None and text == self._object[0]:
            return self._object[1]
        return text or None


class CheckRow(Row):
    def __init__(self, name: str, title: str, description: str):
        super().__init__(name, title, w.Checkbox(value=False, description=description, indent=False,
                                                 layout=w.Layout(width=FIELD_WIDTH)))

    def value(self) -> bool:
        return bool(self.control.value)

    def load(self, value: Any) -> None:
        self.control.value = bool(value)


class ChoiceRow(Row):
    """One of a few fixed values (the engine's own names), the default first."""

    def __init__(self, name: str, title: str, options: list[tuple[str, str]]):
        self.default = options[0][1]
        super().__init__(name, title, w.Dropdown(options=options, value=self.default, layout=w.Layout(width="360px")))

    def value(self) -> str:
        return self.control.value

    def load(self, value: Any) -> None:
        text = self.default if value is None else str(value)
        self.control.value = text if text in [v for _, v in self.control.options] else self.default


class GroupSizeRow(Row):
    def __init__(self):
        options = [("auto (128, else the largest that divides every layer)", "auto")]
        options += [(str(size), str(size)) for size in SUPPORTED_GROUP_SIZES]
        super().__init__("group_size", "group size", w.Dropdown(options=options, value="auto",
                                                                 layout=w.Layout(width="360px")))

    def value(self) -> str | None:
        return None if self.control.value == "auto" else self.control.value

    def load(self, value: Any) -> None:
        text = "auto" if value is None else str(value)
        self.control.value = text if text in [v for _, v in self.control.options] else "auto"


class AutoRow(Row):
    """A number chosen from the VRAM headroom table unless the user sets it.

    With "auto" ticked the field is read-only and shows the value the table picks (and the reason
    beside it); unticking keeps that value as a starting point for the user's own.
    """

    def __init__(self, name: str, title: str):
        self.auto = w.Checkbox(value=True, description="auto", indent=False, layout=w.Layout(width="70px"))
        control = w.Text(value="", continuous_update=False, disabled=True, layout=w.Layout(width="110px"))
        self.hint = w.HTML("", layout=w.Layout(width="380px"))
        super().__init__(name, title, control, self.auto, self.hint)
        self.auto_value: int | None = None
        self.auto_reason = ""
        self._enabled = True
        self.auto.observe(self._toggled, "value")

    def _toggled(self, change: dict) -> None:
        if change["new"]:
            self.control.value = "" if self.auto_value is None else str(self.auto_value)
        elif not self.control.value.strip() and self.auto_value is not None:
            self.control.value = str(self.auto_value)
        self.control.disabled = change["new"] or not self._enabled

    def value(self) -> str | None:
        if self.auto.value:
            return None
        return self.control.value.strip()

    def load(self, value: Any) -> None:
        if value is None:
            self.auto.value = True
        else:
            self.auto.value = False
            self.control.value = str(value)

    def set_hint(self, value: int | None, reason: str, lead: str = "auto") -> None:
        """The value the table picks (or the plan resolved) and why; the field shows it while on auto."""
        self.auto_value, self.auto_reason = value, reason
        text = "" if value is None else f"{html.escape(lead)}: <b>{value}</b>"
        if reason:
            text += f" <span style='color:{COLORS['muted']}'>({html.escape(reason)})</span>"
        self.hint.value = f"<span style='font-family:system-ui,sans-serif;font-size:12px'>{text}</span>"
        if self.auto.value:
            self.control.value = "" if value is None else str(value)

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled
        self.auto.disabled = not enabled
        self.control.disabled = self.auto.value or not enabled


class TokenRow(Row):
    """A Hugging Face token for gated or private models, never shown again once entered.

    The typed value is moved into a :class:`Secret` and the Password field is emptied at once,
    so the token is neither echoed by a repr nor saved with the notebook's widget state.
    """

    def __init__(self):
        control = w.Password(placeholder="optional: else HF_TOKEN or your huggingface-cli login",
                             continuous_update=False, layout=w.Layout(width="420px"))
        self.clear = w.Button(description="forget token", layout=w.Layout(width="130px"))
        self.note = w.HTML("")
        super().__init__("token", "HF token", control, self.clear, self.note)
        self.secret: Secret | None = None
        self._on_change: Callable[[], None] = lambda: None
        control.observe(self._typed, "value")
        self.clear.on_click(lambda _: self._set(None))
        self._show_state()

    def _typed(self, change: dict) -> None:
        text = (change["new"] or "").strip()
        if text:
            self.control.value = ""  # out of the widget state at once
            self._set(Secret(text, "panel"))

    def _set(self, secret: Secret | None) -> None:
        self.secret = secret
        self._show_state()
        self._on_change()

    def _show_state(self) -> None:
        show(self.clear, self.secret is not None)
        self.note.value = (f"<span style='font-family:system-ui,sans-serif;font-size:12px;color:{COLORS['muted']}'>"
                           f"token set ({html.escape(self.secret.source)}), hidden</span>" if self.secret else "")

    def value(self) -> Secret | None:
        return self.secret

    def load(self, value: Any) -> None:
        self.secret = value if isinstance(value, Secret) or value is None else Secret(str(value), "panel")
        self.control.value = ""
        self._show_state()

    def set_enabled(self, enabled: bool) -> None:
        self.control.disabled = not enabled
        self.clear.disabled = not enabled


class SettingsForm:
    """The settings rows; main ones first, the rarely changed ones under "advanced"."""

    def __init__(self):
        self.rows: dict[str, Row] = {}
        main = [
            TextRow("model", "model", "local folder or hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct"),
            TextRow("output", "output folder", "where the 4-bit model is written, e.g. ./qwen-awq"),
            CalibrationRow(),
            TextRow("calibration_split", "split", "train", width="200px"),
            AutoRow("num_samples", "num_samples"),
            AutoRow("seq_len", "seq_len"),
            AutoRow("batch_size", "batch_size"),
        ]
        advanced = [
            GroupSizeRow(),
            TextRow("ignore", "ignore", "module names or re: patterns, comma separated (empty: lm_head and router gates)"),
            CheckRow("symmetric", "symmetric", "symmetric 4-bit weights (no zero points)"),
            ChoiceRow("clip", "clipping", [("search: per-group ranges chosen by output error", "search"),
                                           ("observer: llm-compressor's MSE weight observer", "observer"),
                                           ("none: plain min-max ranges", "none")]),
            ChoiceRow("awq_search", "scale search", [("fast: llm-compressor's choices, faster (a CPU screens first)", "fast"),
                                                     ("stock: llm-compressor's own loop", "stock")]),
            TextRow("text_column", "text column", "detected when empty", width="200px"),
            CheckRow("overwrite", "overwrite", "replace a non-empty output folder"),
            TokenRow(),
        ]
        for row in main + advanced:
            self.rows[row.name] = row
        self.advanced = w.Accordion(children=[w.VBox([r.widget for r in advanced])])
        self.advanced.set_title(0, "advanced")
        self.advanced.selected_index = None  # closed
        self.widget = w.VBox([r.widget for r in main] + [self.advanced])
        self._listeners: list[Callable[[str], None]] = []
        for row in self.rows.values():
            row.control.observe(lambda change, name=row.name: self._changed(name), "value")
            if isinstance(row, AutoRow):
                row.auto.observe(lambda change, name=row.name: self._changed(name), "value")
        token = self.rows["token"]
        assert isinstance(token, TokenRow)
        token._on_change = lambda: self._changed("token")
        self._quiet = False

    def on_change(self, callback: Callable[[str], None]) -> None:
        """``callback(setting name)`` after the user changes a field."""
        self._listeners.append(callback)

    def _changed(self, name: str) -> None:
        if self._quiet:
            return
        for callback in self._listeners:
            callback(name)

    def load(self, values: dict[str, Any]) -> None:
        """Fill the fields from settings (canonical names); fires no change."""
        self._quiet = True
        try:
            for name, row in self.rows.items():
                if name in values:
                    row.load(values[name])
            if any(values.get(n) not in (None, False) for n in ("group_size", "ignore", "symmetric", "text_column", "overwrite")) \
                    or values.get("clip", "search") != "search" or values.get("awq_search", "fast") != "fast":
                self.advanced.selected_index = 0
        finally:
            self._quiet = False

    def options(self) -> dict[str, Any]:
        """Session options from the fields; a text field left empty means the engine's default."""
        out = {name: row.value() for name, row in self.rows.items()}
        if out["calibration_split"] is None:  # None means the default for every other setting, not for this one
            out["calibration_split"] = Settings.calibration_split
        return out

    def show_errors(self, errors: dict[str, str]) -> None:
        for name, row in self.rows.items():
            row.set_message(errors.get(name, ""))
        if any(errors.get(n) for n in ("group_size", "ignore", "symmetric", "clip", "awq_search", "text_column", "overwrite",
                                       "token")):
            self.advanced.selected_index = 0  # an error must not hide in a closed section

    def errors(self) -> dict[str, str]:
        return {name: row.error for name, row in self.rows.items() if row.error}

    def set_hints(self, hints: dict[str, tuple[int | None, str, str]]) -> None:
        """``{setting: (value, reason, lead)}`` beside the auto fields; lead is "auto" or "plan"."""
        self._quiet = True
        try:
            for name, (value, reason, lead) in hints.items():
                row = self.rows.get(name)
                if isinstance(row, AutoRow):
                    row.set_hint(value, reason, lead)
        finally:
            self._quiet = False

    def set_enabled(self, enabled: bool) -> None:
        for row in self.rows.values():
            row.set_enabled(enabled)
