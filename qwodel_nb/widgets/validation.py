"""Judging the form: the engine's own checks, each message placed under the field it is about.

Two stages, both without loading weights:

1. :func:`field_errors`: every setting alone through :func:`~qwodel_nb.engine.settings.make_settings`
   (types, ranges, group sizes, ignore patterns...). Checked one at a time, each message can only
   be about its own field, and two wrong fields show two messages.
2. :meth:`Session.check <qwodel_nb.Session.check>`: once the settings are valid, whether a local
   model folder and a local calibration file can be read and whether the output folder can be
   written. Hub ids are left to the plan, which is asked for with a button, not on every change.
"""

from __future__ import annotations

from typing import Any

from ..engine.errors import QwodelError
from ..engine.settings import make_settings

# make_settings needs a model; a placeholder lets every other setting be checked on its own.
_PLACEHOLDER = {"model": "-"}


def field_errors(options: dict[str, Any]) -> dict[str, str]:
    """``{setting: message}`` for each option the engine refuses, judged one option at a time."""
    errors: dict[str, str] = {}
    for name, value in options.items():
        base = {} if name == "model" else _PLACEHOLDER
        try:
            make_settings(**base, **{name: value})
        except QwodelError as exc:
            errors[name] = exc.message
    return errors


def session_errors(session: Any) -> dict[str, str]:
    """What the session finds wrong with its model, calibration data and output, without network."""
    try:
        return session.check()
    except QwodelError as exc:  # check() reports per setting; anything else is about the model
        return {"model": exc.message}
