"""Early checks, before any weight is loaded, through every surface: API, Session, CLI, magic.

Each fault gives one clear message that says what to do: the API raises the named QwodelError
subclass, the CLI prints one line and exits with code 2, the magic shows one message block; and
nothing is written, no weight loaded (no ``load_model`` phase starts).

Simulated, each at its boundary only: the Hugging Face Hub (an HTTP transport answering as the
hub does for a gated or missing repository), free disk space (``shutil.disk_usage``) and
available memory (``psutil.virtual_memory``). Everything else is real.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import namedtuple

import pytest

pytest.importorskip("IPython")

from IPython.utils.capture import capture_output  # noqa: E402

from qwodel_nb import (  # noqa: E402
    CalibrationDataError,
    ModelNotFoundError,
    OutputError,
    Quantizer,
    ResourceError,
    Session,
    UnsupportedModelError,
)
from qwodel_nb.cli import EXIT_USER_ERROR, main  # noqa: E402
from qwodel_nb.engine import progress as ev  # noqa: E402

GATED = "qwodel-test/gated-model"
DiskUsage = namedtuple("DiskUsage", "total used free")
Memory = namedtuple("Memory", "total available percent used free")


@pytest.fixture(scope="module")
def tiny_opt(tmp_path_factory) -> str:
    """A 2-layer OPT model: transformers knows it, llm-compressor 0.14 has no AWQ mappings for it."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from qwodel_nb.engine.demo import build_tokenizer, generate_text

    folder = str(tmp_path_factory.mktemp("models") / "tiny-opt")
    tokenizer = build_tokenizer(generate_text(200, seed=1), vocab_size=512)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=64,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    OPTForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


OPT_MAPPINGS = [
    {"smooth_layer": r"re:.*layers\.\d+\.self_attn_layer_norm$", "balance_layers": ["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"]},
    {"smooth_layer": "re:.*v_proj$", "balance_layers": ["re:.*out_proj$"]},
    {"smooth_layer": r"re:.*layers\.\d+\.final_layer_norm$", "balance_layers": ["re:.*fc1$"]},
]


# ----------------------------------------------------------------------------- the faults

class Fault:
    """One bad input: what to run, the exception the API raises, words its message must hold."""

    def __init__(self, name, error, words, *, model=None, output=None, calibration=None, simulate=None):
        self.name, self.error, self.words = name, error, words
        self.model, self.output, self.calibration, self.simulate = model, output, calibration, simulate


def _faults():
    def disk_full(monkeypatch):
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(real(p).total, real(p).total - 10_000, 10_000))

    def memory_short(monkeypatch):
        import psutil

        monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory(8 * 2**30, 200_000, 99.9, 8 * 2**30, 0))

    return [
        Fault("missing model", ModelNotFoundError, ["does not exist", "local folder or a hub id"], model="{tmp}/no-such-model"),
        Fault("gated model without token", ModelNotFoundError, ["is gated", "accept its terms", "HF_TOKEN"], model=GATED),
        Fault("unsupported architecture", UnsupportedModelError, ["OPTForCausalLM", "no AWQ mappings", "--mappings"],
              model="{opt}"),
        Fault("output not writable", OutputError, ["Cannot write the output", "choose an output folder you can write to"],
              output="{unwritable}/out"),
        Fault("disk full", ResourceError, ["Not enough free disk space", "free some space"], simulate=disk_full),
        Fault("memory short", ResourceError, ["Not enough CPU memory", "lower num_samples or seq_len"], simulate=memory_short),
        Fault("calibration unreadable", CalibrationDataError, ["is not UTF-8 text"], calibration="{binary}"),
        Fault("calibration empty", CalibrationDataError, ["has no non-empty text", "give other data"], calibration="{blank}"),
    ]


FAULTS = _faults()


@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be created in: read-only for users; /sys for root (which ignores permissions)."""
    if os.geteuid() == 0:
        yield "/sys"
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    yield str(folder)
    folder.chmod(0o700)


@pytest.fixture
def case(request, tmp_path, tiny_llama, tiny_opt, calibration_file, unwritable, monkeypatch, fake_hub):
    """The fault's inputs, resolved, with its boundary simulated; and a folder whose content must not change."""
    fault: Fault = request.param
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8 \x9c\x80")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\t\n\n")
    names = {"tmp": str(tmp_path), "opt": tiny_opt, "unwritable": unwritable, "binary": str(binary), "blank": str(blank)}
    model = (fault.model or tiny_llama).format(**names)
    output = (fault.output or "{tmp}/out").format(**names)
    calibration = (fault.calibration or calibration_file).format(**names)
    if fault.simulate:
        fault.simulate(monkeypatch)
    monkeypatch.chdir(tmp_path)
    return fault, model, output, calibration, sorted(os.listdir(tmp_path))


def _assert_nothing_written(tmp_path, before):
    assert sorted(os.listdir(tmp_path)) == before


ids = [f.name for f in FAULTS]


@pytest.mark.parametrize("case", FAULTS, ids=ids, indirect=True)
def test_api_raises_the_named_error(case, tmp_path):
    fault, model, output, calibration, before = case
    q = Quantizer(model_path=model, output_dir=output, calibration_dataset=calibration, num_samples=4, seq_length=32)
    with pytest.raises(fault.error) as info:
        q.quantize()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in fault.words), message
    _assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize("case", FAULTS, ids=ids, indirect=True)
def test_session_fails_before_loading_any_weight(case, tmp_path):
    fault, model, output, calibration, before = case
    events: list = []
    s = Session(model=model, output=output, calibration_dataset=calibration, num_samples=4, seq_len=32)
    with pytest.raises(fault.error):
        s.run(callbacks=[events.append], progress=False)
    assert s.state == "failed" and all(w in s.status() for w in fault.words[:1])
    started = [e.phase for e in events if isinstance(e, ev.PhaseStarted)]
    assert "load_model" not in started, started
    _assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize("case", FAULTS, ids=ids, indirect=True)
def test_cli_prints_one_line_and_exits_2(case, tmp_path, capsys):
    fault, model, output, calibration, before = case
    code = main(["quantize", model, "--output", output, "--calibration-dataset", calibration,
                 "--num-samples", "4", "--seq-len", "32"])
    captured = capsys.readouterr()
    assert code == EXIT_USER_ERROR
    lines = [line for line in captured.err.splitlines() if line.startswith("qwodel: error: ")]
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert all(w in lines[0] for w in fault.words), lines[0]
    assert "Compression lifecycle" not in captured.out  # no AWQ started
    _assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize("case", FAULTS, ids=ids, indirect=True)
def test_magic_shows_one_message_block(case, tmp_path, shell):
    fault, model, output, calibration, before = case
    shell.user_ns.update(m=model, o=output, c=calibration)
    with capture_output() as cap:
        result = shell.run_cell("%%qwodel bad\nmodel: {m}\noutput: {o}\ncalibration: {c}\nnum_samples: 4\nseq_len: 32\n")
    assert result.error_in_exec is None and result.error_before_exec is None
    blocks = [o.data for o in cap.outputs if "qwodel error" in o.data.get("text/plain", "")]
    assert len(blocks) == 1, [o.data.get("text/plain") for o in cap.outputs]
    text = blocks[0]["text/plain"]
    assert all(w in text for w in fault.words), text
    assert "Traceback" not in cap.stdout + cap.stderr
    assert "<b>Result</b>" not in "".join(o.data.get("text/html", "") for o in cap.outputs)
    _assert_nothing_written(tmp_path, before)


# ----------------------------------------------------------------------------- hub tokens and mappings


def test_gated_model_with_a_token_says_the_token_lacks_access(fake_hub):
    token = "hf_" + "GatedButNotGranted" * 2
    with pytest.raises(ModelNotFoundError) as info:
        Quantizer(model_path=GATED, output_dir="never", token=token).plan()
    message = str(info.value)
    assert "is gated and the token (from argument) has no access" in message and token not in message
    assert fake_hub.tokens_sent() == {token}


@pytest.mark.parametrize("source", ["argument", "HF_TOKEN", "huggingface login"])
def test_the_token_reaches_the_hub_from_each_source(source, fake_hub, no_ambient_token, monkeypatch):
    token = "hf_" + f"TokenFrom{source.replace(' ', '')}" * 2
    kwargs = {}
    if source == "argument":
        kwargs["token"] = token
    elif source == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        no_ambient_token.write_text(token + "\n")
    with pytest.raises(ModelNotFoundError, match=f"the token \\(from {source}\\) has no access"):
        Session(model=GATED, **kwargs).plan()
    assert fake_hub.tokens_sent() == {token}


def test_missing_hub_repository(fake_hub):
    with pytest.raises(ModelNotFoundError, match="was not found on the Hugging Face Hub"):
        Session(model="qwodel-test/no-such-model").plan()


def test_mappings_make_an_unsupported_architecture_run(tiny_opt, tmp_path, calibration_texts):
    """Real AWQ on OPT with the user's mappings: the scales are applied to the norms they name."""
    import torch
    from transformers import AutoModelForCausalLM

    s = Session(model=tiny_opt, output=str(tmp_path / "out"), calibration_dataset=calibration_texts,
                num_samples=4, seq_len=32, mappings=OPT_MAPPINGS)
    assert "your mappings" in str(s.plan())
    result = s.run(progress=False)
    assert [r.smooth_layer for r in result.stats][:3] == [
        "model.decoder.layers.0.self_attn_layer_norm", "model.decoder.layers.0.self_attn.v_proj",
        "model.decoder.layers.0.final_layer_norm"]
    recipe = (tmp_path / "out" / "recipe.yaml").read_text()
    assert "final_layer_norm" in recipe and "out_proj" in recipe
    summary = json.loads((tmp_path / "out" / "qwodel_summary.json").read_text())
    assert summary["settings"]["mappings"][1] == {"smooth_layer": "re:.*v_proj$", "balance_layers": ["re:.*out_proj$"]}
    before = AutoModelForCausalLM.from_pretrained(tiny_opt, dtype=torch.float32).model.decoder.layers[0].final_layer_norm.weight
    after = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).model.decoder.layers[0].final_layer_norm.weight
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("mappings, words", [
    ([{"smooth_layer": "re:.*input_layernorm$", "balance_layers": ["re:.*fc1$"]}], ["smooth_layer 're:.*input_layernorm$' matches no module"]),
    ([{"smooth_layer": "re:.*final_layer_norm$", "balance_layers": ["re:.*gate_proj$"]}], ["'re:.*gate_proj$' matches no Linear layer"]),
    ([{"smooth": "x"}], ["exactly the keys 'smooth_layer' and 'balance_layers'"]),
    ("not a list", ["non-empty list of AWQ mappings"]),
])
def test_wrong_mappings_are_one_line_errors(mappings, words, tiny_opt, capsys, tmp_path):
    path = tmp_path / "mappings.json"
    path.write_text(json.dumps(mappings))
    code = main(["plan", tiny_opt, "--mappings", str(path), "--calibration-dataset", str(path)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1
    assert all(w in err for w in words), err


def test_a_folder_that_is_not_a_dataset_is_refused_without_reading_it(tmp_path, offline_wikitext):
    """A mistyped '.', '..' or '~' must not make datasets read every file below it."""
    from qwodel_nb.engine.calibration import read_source

    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    (project / "notes" / "todo.json").write_text('["not calibration data"]')
    (project / "README.md").write_text("# a project, not a dataset card\n")
    for source in (str(project), "~", "/"):
        with pytest.raises(CalibrationDataError, match="does not look like a dataset folder"):
            read_source(source)
    (project / "train.jsonl").write_text('{"text": "a real sample"}\n')
    assert read_source(str(project)).rows == ["a real sample"]
    assert len(read_source(str(offline_wikitext / "wikitext"))) > 0  # a dataset card with configs
