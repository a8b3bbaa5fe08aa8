"""Refusals of the Hugging Face Hub, turned into one line that says what to do.

The hub client raises typed errors (``GatedRepoError``, ``RepositoryNotFoundError``, ...);
transformers and datasets wrap them in their own exceptions, so the exception chain is searched
for them rather than the wrapped text. The token is named by where it came from, never shown.
"""

from __future__ import annotations

from .secrets import Secret


def _causes(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def hub_error_message(source: str, exc: BaseException, token: Secret | None, what: str = "Model") -> str | None:
    """A one-line message for a Hugging Face Hub refusal found in ``exc``'s chain, or None.

    The hub client raises typed errors (``GatedRepoError``, ``RepositoryNotFoundError``...);
    transformers and datasets wrap them, so the chain is searched rather than the text.
    """
    try:
        from huggingface_hub import errors as hub
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    page = f"https://huggingface.co/{source}"
    given = f"the token (from {token.source})" if token else None
    ask = "set HF_TOKEN, run `huggingface-cli login`, or pass token=... (CLI: prefer HF_TOKEN over --token)"
    for cause in _causes(exc):
        if isinstance(cause, hub.GatedRepoError):
            if given:
                return (f"{what} {source!r} is gated and {given} has no access to it; accept its terms on {page} "
                        "with the account of that token, then run again.")
            return f"{what} {source!r} is gated: accept its terms on {page}, then give a token: {ask}."
        if isinstance(cause, hub.RepositoryNotFoundError):
            if given:
                return (f"{what} {source!r} was not found on the Hugging Face Hub, or {given} cannot see it; "
                        "check the name and the token's access.")
            return (f"{what} {source!r} was not found on the Hugging Face Hub nor as a local folder; check the name, "
                    f"or if it is private, {ask}.")
        if isinstance(cause, hub.RevisionNotFoundError):
            return f"{what} {source!r} has no such revision on the Hugging Face Hub; check the name."
        if isinstance(cause, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)):
            return (f"Could not reach the Hugging Face Hub for {source!r}, and it is not in the local cache; "
                    "check the network (and HF_HUB_OFFLINE), or download it and give its local folder.")
        if isinstance(cause, hub.HfHubHTTPError):
            status = getattr(getattr(cause, "response", None), "status_code", None)
            if status == 401 and given:
                return f"The Hugging Face Hub refused {given} for {source!r} (401); check that the token is valid."
            if status in (401, 403):
                return f"The Hugging Face Hub refused access to {source!r} ({status}); {ask}."
    return None
