"""Versions of the libraries that shaped a run, for the summary."""

from __future__ import annotations

from importlib import metadata

LIBRARIES = ("qwodel-nb", "llmcompressor", "compressed-tensors", "torch", "transformers", "datasets", "accelerate")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
