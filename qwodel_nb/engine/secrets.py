"""Hugging Face tokens: where they come from, and how they are kept out of every output.

A token is held in a :class:`Secret`, whose ``repr``/``str`` never show the value. The value is
revealed only at the two places that hand it to a library (``from_pretrained`` and
``load_dataset``). :func:`redact` scrubs a token out of any text before it is shown or saved,
for messages that come back from those libraries.
"""

from __future__ import annotations

import os
import re
from typing import Callable, TypeVar

T = TypeVar("T")

_MASK = "***"
# Hugging Face user access tokens start with "hf_"; scrub anything that looks like one too.
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class Secret:
    """A string that does not show itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "argument"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a token must be a non-empty string")
        self._value = value.strip()
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK}, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        # Refuse to be pickled or deep-copied into anything that could end up on disk.
        raise TypeError("a Secret cannot be pickled")

    def __deepcopy__(self, memo):
        return self


def resolve_token(explicit: str | Secret | None) -> Secret | None:
    """The token to use: the explicit one, else ``HF_TOKEN``, else the saved Hugging Face login."""
    if isinstance(explicit, Secret):
        return explicit
    if explicit:
        return Secret(explicit, "argument")
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if env and env.strip():
        return Secret(env, "HF_TOKEN")
    try:
        from huggingface_hub import get_token

        saved = get_token()
    except Exception:  # pragma: no cover - an unreadable login file is the same as none
        saved = None
    if saved:
        return Secret(saved, "huggingface login")
    return None


def redact(text: str, *secrets: Secret | None) -> str:
    """``text`` with every given secret, and anything shaped like a Hugging Face token, masked."""
    for secret in secrets:
        if secret is not None:
            text = text.replace(secret.reveal(), _MASK)
    return _TOKEN_PATTERN.sub(_MASK, text)


def call_translating(call: Callable[[], T], translate: Callable[[Exception], BaseException]) -> T:
    """``call()``; if it fails, raise ``translate(exc)`` with no link back to the library's exception.

    Library exceptions can quote a token (a server echoing credentials, a URL with a query). An
    exception raised inside an ``except`` block keeps the handled one as ``__context__`` even with
    ``from None``, where a debugger or an error reporter finds it; raised after the block, it has none.
    """
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - every library failure becomes one of our messages
        error = translate(exc)
    raise error
