"""Small pieces every part of the panel uses: one-line messages, showing and hiding, sizes.

Only widget APIs present in both ipywidgets 7.7.1 (Colab) and 8.x are used anywhere in this
package: titles through ``set_title``, styling through ``Layout`` and HTML, no ``titles=``
arguments and no ``Label`` styles.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from ..engine.secrets import Secret, redact

COLORS = {"error": "#D55E00", "warning": "#E69F00", "note": "#0072B2", "ok": "#009E73", "muted": "#666666"}
LABEL_WIDTH = "150px"
FIELD_WIDTH = "560px"


def one_line(exc: BaseException, *secrets: Secret | None) -> str:
    """The message of any exception on one line, without a traceback and without a token in it.

    Errors the user can fix (:class:`~qwodel_nb.QwodelError`) carry their own message; anything
    else is named by its type, since it is a bug to report rather than an input to change.
    """
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        text = " ".join(str(exc).split())
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        if len(message) > 300:
            message = message[:297] + "..."
    return redact(message, *secrets)


def message_html(text: str, kind: str = "error") -> str:
    """A one-line coloured message for an HTML widget; empty text gives an empty string."""
    if not text:
        return ""
    color = COLORS.get(kind, COLORS["muted"])
    return (f"<div style='font-family:system-ui,sans-serif;font-size:12px;color:{color};"
            f"line-height:1.35;margin:0 0 2px 0'>{html.escape(text)}</div>")


def show(widget: Any, visible: bool) -> None:
    """Show or hide a widget without removing it from its box (same in ipywidgets 7 and 8)."""
    widget.layout.display = None if visible else "none"


def label(text: str, width: str = LABEL_WIDTH) -> w.HTML:
    """A fixed-width label column; HTML rather than Label, whose styling differs between versions."""
    return w.HTML(f"<span style='font-family:system-ui,sans-serif;font-size:13px'>{html.escape(text)}</span>",
                  layout=w.Layout(width=width, min_width=width))

