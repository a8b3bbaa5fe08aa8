"""The ipywidgets panel over a :class:`~qwodel_nb.Session` (opened by ``qwodel_nb.panel()``,
``Session.panel()`` and ``%qwodel panel``).

One module per concern: :mod:`.fields` (the settings form), :mod:`.validation` (the engine's
checks placed under their fields), :mod:`.tabs` (VRAM, plan, preview, results),
:mod:`.progress` (events to throttled bars), :mod:`.runner` (thread or foreground runs),
:mod:`.ui_poll` (widget messages during a foreground run) and :mod:`.app` (the wiring).

The package is named ``widgets`` and not ``panel`` so that ``qwodel_nb.panel`` stays the
function: importing a submodule ``qwodel_nb.panel`` would replace it on the package.
"""

from .app import Panel, open_panel

__all__ = ["Panel", "open_panel"]
