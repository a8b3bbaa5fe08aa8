"""qwodel_nb.examples: the offline models and texts the notebooks use."""

from __future__ import annotations

import os

from qwodel_nb.examples import demo_model, demo_texts, english_paragraphs, heldout_texts


def test_demo_model_is_built_once_quietly_and_rebuilt_for_another_recipe(tmp_path, capfd):
    workdir = str(tmp_path / "work")
    folder = demo_model(workdir, train_steps=2)
    assert folder == os.path.join(workdir, "demo-llama")  # as given: a relative workdir stays relative
    assert os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, "tokenizer.json"))
    assert not os.path.exists(folder + ".partial")
    made = os.path.getmtime(os.path.join(folder, "model.safetensors"))
    out, err = capfd.readouterr()
    assert "Writing model shards" not in out + err and "%|" not in out + err

    assert demo_model(workdir, train_steps=2) == folder
    assert os.path.getmtime(os.path.join(folder, "model.safetensors")) == made

    demo_model(workdir, train_steps=3)
    assert os.path.getmtime(os.path.join(folder, "model.safetensors")) != made


def test_texts_are_reproducible_and_distinct():
    assert demo_texts(8) == demo_texts(8)
    assert not set(demo_texts(64)) & set(heldout_texts(40))


def test_english_paragraphs_are_prose_in_a_fixed_order():
    prose = english_paragraphs()
    assert len(prose) >= 60
    assert prose == english_paragraphs()
    assert len(set(prose)) == len(prose)
    for paragraph in prose:
        assert len(paragraph) >= 200 and paragraph.endswith(".")
        assert ">>>" not in paragraph and "\n" not in paragraph
