"""Untrusted code: a model repository's own Python runs only when the user turns it on for that run.

The model folders here ship Python files that leave a marker file when they are imported. With
``trust_remote_code`` off (the default) the marker never appears, and a model that needs its code
gets a message saying so through every surface; turned on for one run, the code runs for that
run, and the next run without it is refused again.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from qwodel_nb import Quantizer, Session, UnsupportedModelError
from qwodel_nb.cli import EXIT_USER_ERROR, main

CODE = '''
import os
open(os.environ["QWODEL_REMOTE_CODE_MARKER"], "a").write(__name__ + "\\n")
from transformers import LlamaConfig, LlamaForCausalLM


class QwodelCustomConfig(LlamaConfig):
    model_type = "qwodel_custom"


class QwodelCustomForCausalLM(LlamaForCausalLM):
    config_class = QwodelCustomConfig
'''


@pytest.fixture
def code_repo(tmp_path, tiny_llama, monkeypatch):
    """A copy of the tiny Llama whose config asks for its own code; and where that code would leave a mark."""
    import shutil

    import transformers.dynamic_module_utils as dynamic

    folder = tmp_path / "custom-model"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="qwodel_custom", architectures=["QwodelCustomForCausalLM"], auto_map={
        "AutoConfig": "qwodel_custom_code.QwodelCustomConfig",
        "AutoModelForCausalLM": "qwodel_custom_code.QwodelCustomForCausalLM",
    })
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "qwodel_custom_code.py").write_text(CODE)
    marker = tmp_path / "remote-code-ran.txt"
    monkeypatch.setenv("QWODEL_REMOTE_CODE_MARKER", str(marker))
    modules = tmp_path / "hf-modules"  # where transformers copies a repository's code before importing it
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(modules))
    yield str(folder), marker
    if str(modules) in sys.path:
        sys.path.remove(str(modules))


WORDS = ["needs its own Python code", "trust_remote_code=True", "--trust-remote-code", "for this run"]


def test_off_by_default_with_a_message_on_every_surface(code_repo, tmp_path, capsys):
    folder, marker = code_repo
    for make in (lambda: Session(model=folder).plan(),
                 lambda: Quantizer(model_path=folder, output_dir=str(tmp_path / "out")).quantize()):
        with pytest.raises(UnsupportedModelError) as info:
            make()
        assert all(w in str(info.value) for w in WORDS), str(info.value)
    assert main(["quantize", folder, "--output", str(tmp_path / "out")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in WORDS)
    assert not marker.exists()  # not one line of the repository's code ran
    assert not (tmp_path / "out").exists()


def test_the_magic_says_so_too(code_repo):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    folder, marker = code_repo
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "qwodel_nb")
    try:
        shell.user_ns["custom"] = folder
        with capture_output() as cap:
            shell.run_cell("%%qwodel --dry-run\nmodel: {custom}\n")
        text = "\n".join(o.data.get("text/plain", "") for o in cap.outputs)
        assert "qwodel error" in text and all(w in text for w in WORDS), text
        assert not marker.exists()
    finally:
        shell.run_line_magic("unload_ext", "qwodel_nb")


def test_on_for_one_run_only(code_repo, calibration_texts):
    folder, marker = code_repo
    trusted = Session(model=folder, trust_remote_code=True, calibration_dataset=calibration_texts)
    assert trusted.plan().model.class_name == "QwodelCustomForCausalLM"
    assert marker.read_text().strip()  # the code ran, because it was asked for
    marker.unlink()
    with pytest.raises(UnsupportedModelError, match="needs its own Python code"):
        Session(model=folder, calibration_dataset=calibration_texts).plan()  # the next run is not trusted
    trusted.configure(trust_remote_code=False)
    with pytest.raises(UnsupportedModelError, match="needs its own Python code"):
        trusted.plan()


def test_code_shipped_with_a_known_architecture_is_not_run(tmp_path, tiny_llama, monkeypatch, calibration_texts):
    """A Llama repository that also ships modeling code: without opting in, transformers' own class is used."""
    import shutil

    folder = tmp_path / "llama-with-code"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "qwodel_custom_code.QwodelCustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "qwodel_custom_code.py").write_text(CODE)
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv("QWODEL_REMOTE_CODE_MARKER", str(marker))
    plan = Session(model=str(folder), calibration_dataset=calibration_texts).plan()
    assert plan.model.class_name == "LlamaForCausalLM"
    assert not marker.exists() and not os.path.exists(tmp_path / "hf-modules")
