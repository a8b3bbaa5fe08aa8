"""Shared fixtures: small real models built locally (no network), once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _build(root, name: str, **kwargs) -> str:
    from qwodel_nb.engine.demo import build_model

    return build_model(str(root / name), **kwargs)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama (hidden 128: group size 128 divides every layer), trained for a few steps."""
    root = tmp_path_factory.mktemp("models")
    return _build(root, "tiny-llama-128", hidden_size=128, intermediate_size=256, layers=2, heads=4, kv_heads=2, train_steps=25)


@pytest.fixture(scope="session")
def tiny_llama_odd(tmp_path_factory) -> str:
    """A 2-layer Llama whose width (96) group size 128 does not divide: the fallback must pick 32."""
    root = tmp_path_factory.mktemp("models")
    return _build(root, "tiny-llama-96", hidden_size=96, intermediate_size=192, layers=2, heads=3, kv_heads=1, train_steps=25)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="session")
def calibration_texts() -> list[str]:
    from qwodel_nb.engine.demo import generate_text

    return generate_text(48, seed=11)


@pytest.fixture(scope="session")
def heldout_texts() -> list[str]:
    from qwodel_nb.engine.demo import generate_text

    return generate_text(24, seed=12)


@pytest.fixture
def calibration_file(tmp_path, calibration_texts) -> str:
    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(calibration_texts) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def offline_wikitext(tmp_path, monkeypatch, calibration_texts):
    """A local dataset folder named ``wikitext`` with a ``wikitext-2-raw-v1`` configuration, in the cwd.

    ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")`` resolves a folder of that name in the
    working directory before the hub, so the original qwodel example (whose default calibration is
    ``wikitext:wikitext-2-raw-v1``) runs unchanged and offline through the same code path as the hub.
    Rows mimic wikitext's: headings, blank lines and paragraphs.
    """
    import json

    root = tmp_path / "wikitext"
    data = root / "wikitext-2-raw-v1"
    data.mkdir(parents=True)
    rows = []
    for i, text in enumerate(calibration_texts):
        rows += [{"text": ""}, {"text": f" = Section {i} = \n"}, {"text": ""}, {"text": f" {text} \n"}]
    with open(data / "train.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-2-raw-v1\n  data_files:\n  - split: train\n"
        "    path: wikitext-2-raw-v1/train.jsonl\n---\n",
        encoding="utf-8",
    )
    # A private datasets cache: offline, datasets may otherwise serve an earlier "wikitext" from its cache.
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.chdir(tmp_path)
    return tmp_path
