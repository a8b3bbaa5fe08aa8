"""make_settings: aliases, defaults, validation messages, replace() and public_dict()."""

from __future__ import annotations

import json
import pathlib

import pytest

from qwodel_nb.engine.errors import QwodelError, SettingsError
from qwodel_nb.engine.secrets import Secret
from qwodel_nb.engine.settings import (
    ALIASES,
    DEFAULT_CALIBRATION,
    describe_calibration_source,
    field_names,
    make_settings,
)

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"


def test_defaults():
    s = make_settings(model="org/model")
    assert s.model == "org/model"
    assert s.output is None
    assert (s.backend, s.format) == ("awq", "int4")
    assert s.calibration_dataset == DEFAULT_CALIBRATION
    assert s.calibration_split == "train"
    assert s.batch_size is None and s.seq_len is None and s.num_samples is None
    assert s.ignore is None and s.group_size is None and s.token is None
    assert (s.device, s.dtype, s.seed) == ("auto", "auto", 0)
    assert s.symmetric is False and s.trust_remote_code is False and s.overwrite is False


@pytest.mark.parametrize("alias, canonical", sorted(ALIASES.items()))
def test_every_alias_maps_to_its_field(alias, canonical):
    values = {
        "model": "org/model",
        "output": "out-dir",
        "calibration_dataset": "some/dataset",
        "calibration_split": "validation",
        "seq_len": 256,
        "num_samples": 16,
        "token": TOKEN,
        "gpus": 3,
        "awq_search": "stock",
    }
    options = {"model": "org/model"} if canonical != "model" else {}
    options[alias] = values[canonical]
    s = make_settings(**options)
    got = getattr(s, canonical)
    if canonical == "token":
        assert isinstance(got, Secret) and got.reveal() == TOKEN
    else:
        assert got == values[canonical]


def test_aliases_only_name_real_fields():
    assert set(ALIASES.values()) <= set(field_names())


def test_original_qwodel_names_together():
    s = make_settings(
        model_path="m", output_dir="o", seq_length=1024, num_calibration_samples=64, dataset=["a text"], hf_token=TOKEN
    )
    assert (s.model, s.output, s.seq_len, s.num_samples) == ("m", "o", 1024, 64)
    assert s.calibration_dataset == ["a text"]
    assert s.token.reveal() == TOKEN


def test_missing_model():
    with pytest.raises(SettingsError, match="No model given"):
        make_settings(output="x")
    with pytest.raises(SettingsError, match="No model given"):
        make_settings(model=None)


def test_unknown_setting_suggests_close_name():
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", batchsize=4)
    msg = str(info.value)
    assert "Unknown setting 'batchsize'" in msg
    assert "Did you mean 'batch_size'?" in msg
    assert "seq_len" in msg  # the known settings are listed


def test_unknown_setting_without_close_match_has_no_hint():
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", zzzzzz=1)
    assert "Did you mean" not in str(info.value)


def test_setting_given_twice_via_two_aliases():
    with pytest.raises(SettingsError, match=r"Setting 'model' was given twice"):
        make_settings(model="a", model_path="b")
    with pytest.raises(SettingsError, match=r"given twice"):
        make_settings(model_path="a", model_id="b")


def test_setting_given_twice_alias_first():
    with pytest.raises(SettingsError, match="given twice"):
        make_settings(model_path="a", model="b")


def test_errors_are_settings_errors_and_value_errors():
    with pytest.raises(ValueError):
        make_settings(model="m", batch_size=0)
    assert issubclass(SettingsError, QwodelError)


def test_error_message_is_one_line():
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", format="int8")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value, expected", [(4, 4), ("8", 8), (" 2 ", 2), (16.0, 16), ("auto", None), ("AUTO", None), (None, None)])
def test_batch_size_accepted_values(value, expected):
    assert make_settings(model="m", batch_size=value).batch_size == expected


@pytest.mark.parametrize("value", [True, 2.5, "four", [4]])
def test_batch_size_rejected_types(value):
    with pytest.raises(SettingsError, match=r"'batch_size' must be a whole number or 'auto'"):
        make_settings(model="m", batch_size=value)


@pytest.mark.parametrize("name", ["batch_size", "num_samples"])
def test_counts_must_be_positive(name):
    with pytest.raises(SettingsError, match=rf"'{name}' must be at least 1, got 0"):
        make_settings(model="m", **{name: 0})
    with pytest.raises(SettingsError, match=rf"'{name}' must be at least 1, got -3"):
        make_settings(model="m", **{name: -3})


def test_seq_len_minimum_is_8():
    assert make_settings(model="m", seq_len=8).seq_len == 8
    with pytest.raises(SettingsError, match=r"'seq_len' must be at least 8, got 7"):
        make_settings(model="m", seq_len=7)


def test_backend_and_format():
    assert make_settings(model="m", backend="AWQ", format="INT4").backend == "awq"
    with pytest.raises(SettingsError, match=r"backend 'gptq' is not supported; supported: awq"):
        make_settings(model="m", backend="gptq")
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", format="int8")
    assert "format 'int8' is not supported" in str(info.value)
    assert "int4" in str(info.value)


@pytest.mark.parametrize("value", [128, 64, 32, "64"])
def test_group_size_supported(value):
    assert make_settings(model="m", group_size=value).group_size == int(value)


@pytest.mark.parametrize("value", [16, 100, 256])
def test_group_size_unsupported(value):
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", group_size=value)
    msg = str(info.value)
    assert f"group_size {value} is not served" in msg
    assert "128, 64, 32" in msg


@pytest.mark.parametrize(
    "value, expected",
    [("auto", "auto"), ("bf16", "bfloat16"), ("FP16", "float16"), ("half", "float16"), ("fp32", "float32"), ("bfloat16", "bfloat16")],
)
def test_dtype_aliases(value, expected):
    assert make_settings(model="m", dtype=value).dtype == expected


def test_dtype_unsupported():
    with pytest.raises(SettingsError, match=r"dtype 'int8' is not supported; use one of auto, bfloat16"):
        make_settings(model="m", dtype="int8")


@pytest.mark.parametrize(
    "value, expected", [("auto", "auto"), ("CPU", "cpu"), ("cuda", "cuda"), ("gpu", "cuda"), ("cuda:0", "cuda")]
)
def test_device_accepted(value, expected):
    assert make_settings(model="m", device=value).device == expected


def test_device_other_gpu_points_to_cuda_visible_devices():
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", device="cuda:1")
    msg = str(info.value)
    assert "CUDA_VISIBLE_DEVICES=1" in msg
    assert "device='cuda'" in msg


def test_device_unknown():
    with pytest.raises(SettingsError, match=r"device must be 'auto', 'cuda' or 'cpu', not 'tpu'"):
        make_settings(model="m", device="tpu")


@pytest.mark.parametrize("value, expected", [(True, True), ("yes", True), ("On", True), ("1", True), (False, False), ("no", False), ("0", False)])
def test_bool_settings(value, expected):
    s = make_settings(model="m", symmetric=value, overwrite=value, trust_remote_code=value)
    assert s.symmetric is expected and s.overwrite is expected and s.trust_remote_code is expected


@pytest.mark.parametrize("value", ["maybe", 1, None])
def test_bool_rejects_other_values(value):
    with pytest.raises(SettingsError, match=r"'overwrite' must be true or false"):
        make_settings(model="m", overwrite=value)


def test_text_settings_strip_and_reject_empty():
    s = make_settings(model="  org/model  ", output=pathlib.Path("out"), text_column=" body ")
    assert (s.model, s.output, s.text_column) == ("org/model", "out", "body")
    with pytest.raises(SettingsError, match=r"'model' must be a non-empty text"):
        make_settings(model="   ")
    with pytest.raises(SettingsError, match=r"'output' must be a non-empty text"):
        make_settings(model="m", output=3)


def test_model_path_object_is_accepted():
    assert make_settings(model=pathlib.Path("/models/x")).model == "/models/x"


def test_ignore_forms():
    assert make_settings(model="m", ignore="lm_head, re:.*gate$ ,").ignore == ("lm_head", "re:.*gate$")
    assert make_settings(model="m", ignore=["lm_head"]).ignore == ("lm_head",)
    assert make_settings(model="m", ignore=()).ignore == ()


def test_ignore_blank_string_is_an_empty_list():
    assert make_settings(model="m", ignore="  ").ignore == ()


@pytest.mark.parametrize("value", [[1, 2], [""], ["lm_head", "  "], {"lm_head"}, 5])
def test_ignore_rejects_non_names(value):
    with pytest.raises(SettingsError, match=r"'ignore' must be a list of module names or 're:' patterns"):
        make_settings(model="m", ignore=value)


def test_ignore_invalid_regex():
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", ignore=["re:.*(unclosed"])
    assert "'re:.*(unclosed'" in str(info.value)
    assert "not a valid regular expression" in str(info.value)


def test_calibration_forms():
    assert make_settings(model="m", calibration_dataset=None).calibration_dataset == DEFAULT_CALIBRATION
    assert make_settings(model="m", calibration_dataset=pathlib.Path("/d/c.txt")).calibration_dataset == "/d/c.txt"
    assert make_settings(model="m", calibration_dataset=("a", "b")).calibration_dataset == ["a", "b"]


def test_calibration_dataset_object_is_kept():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    assert make_settings(model="m", calibration_dataset=ds).calibration_dataset is ds


def test_calibration_rejects_other_types():
    with pytest.raises(SettingsError, match=r"must hold texts \(str\) only"):
        make_settings(model="m", calibration_dataset=["a", 3])
    with pytest.raises(SettingsError) as info:
        make_settings(model="m", calibration_dataset=42)
    assert "not int" in str(info.value)
    assert "'calibration_dataset' must be a hub id" in str(info.value)


def test_seed():
    assert make_settings(model="m", seed=7).seed == 7
    for bad in (True, "7", 1.0):
        with pytest.raises(SettingsError, match=r"'seed' must be a whole number"):
            make_settings(model="m", seed=bad)


def test_token_becomes_secret():
    s = make_settings(model="m", token=f"  {TOKEN} ")
    assert isinstance(s.token, Secret)
    assert s.token.reveal() == TOKEN
    assert s.token.source == "argument"


def test_token_secret_is_kept_with_its_source():
    secret = Secret(TOKEN, "HF_TOKEN")
    assert make_settings(model="m", token=secret).token is secret


@pytest.mark.parametrize("bad", ["", "   ", 123])
def test_token_rejects_empty_or_non_text(bad):
    with pytest.raises(SettingsError, match=r"'token' must be a Hugging Face token"):
        make_settings(model="m", token=bad)


def test_settings_are_immutable():
    s = make_settings(model="m")
    with pytest.raises(AttributeError):
        s.model = "other"  # type: ignore[misc]


def test_repr_does_not_show_token():
    s = make_settings(model="m", token=TOKEN)
    assert TOKEN not in repr(s)
    assert "token" not in repr(s)


def test_equality_ignores_token():
    assert make_settings(model="m", token=TOKEN) == make_settings(model="m")


def test_replace_applies_changes_and_validates():
    s = make_settings(model="m", batch_size=2, token=TOKEN, ignore=["lm_head"])
    r = s.replace(seq_length=512, batch_size="auto")
    assert r.seq_len == 512 and r.batch_size is None
    assert r.model == "m" and r.ignore == ("lm_head",)
    assert r.token.reveal() == TOKEN  # the token survives replace()
    assert s.seq_len is None and s.batch_size == 2  # the original is untouched
    with pytest.raises(SettingsError, match=r"'seq_len' must be at least 8"):
        s.replace(seq_len=4)
    with pytest.raises(SettingsError, match="Unknown setting 'sequence'"):
        s.replace(sequence=4)


def test_replace_alias_of_model():
    assert make_settings(model="a").replace(model_path="b").model == "b"


def test_public_dict_has_no_token_value():
    s = make_settings(model="m", token=TOKEN, ignore=["lm_head"], calibration_dataset=["x", "y", "z"])
    d = s.public_dict()
    assert set(d) == set(field_names())
    assert d["token"] == "*** (from argument)"
    assert d["ignore"] == ["lm_head"]
    assert d["calibration_dataset"] == "<in-memory list of 3 texts>"
    text = json.dumps(d)  # JSON-friendly
    assert TOKEN not in text
    assert "hf_" not in text


def test_public_dict_without_token():
    d = make_settings(model="m").public_dict()
    assert d["token"] is None
    assert d["calibration_dataset"] == DEFAULT_CALIBRATION
    assert d["ignore"] is None


def test_public_dict_names_token_source():
    d = make_settings(model="m", token=Secret(TOKEN, "huggingface login")).public_dict()
    assert d["token"] == "*** (from huggingface login)"


def test_describe_calibration_source():
    import datasets

    assert describe_calibration_source("repo:subset") == "repo:subset"
    assert describe_calibration_source(pathlib.Path("/a/b.txt")) == "/a/b.txt"
    assert describe_calibration_source(["a", "b"]) == "<in-memory list of 2 texts>"
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    assert describe_calibration_source(ds) == "<in-memory Dataset of 3 rows>"
    assert describe_calibration_source(object()) == "<in-memory object>"



def test_search_and_clip_settings():
    s = make_settings(model="m")
    assert (s.awq_search, s.clip) == ("fast", "search")
    s = make_settings(model="m", search="STOCK", clip=" observer ")
    assert (s.awq_search, s.clip) == ("stock", "observer")
    assert s.public_dict()["clip"] == "observer" and s.public_dict()["awq_search"] == "stock"
    with pytest.raises(SettingsError, match="awq_search 'slow' is not known"):
        make_settings(model="m", awq_search="slow")
    with pytest.raises(SettingsError, match="clip 'always' is not known; use 'search'"):
        make_settings(model="m", clip="always")
