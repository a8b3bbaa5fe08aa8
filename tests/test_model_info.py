"""inspect_model: what is read from config, meta module tree and safetensors headers, and its errors."""

from __future__ import annotations

import json
import shutil

import pytest

from qwodel_nb.engine.errors import ModelNotFoundError, UnsupportedModelError
from qwodel_nb.engine.model_info import LinearLayer, inspect_model, is_hub_id

SAFETENSORS_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}


@pytest.fixture(scope="module")
def real_model(tiny_llama):
    """The tiny Llama actually loaded, to compare inspect_model's numbers with."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def info(tiny_llama):
    return inspect_model(tiny_llama)


def _config_only_copy(model_dir: str, target, **changes) -> str:
    """A folder with the model's config.json (optionally edited) and no weight file."""
    target.mkdir()
    with open(f"{model_dir}/config.json", encoding="utf-8") as fh:
        config = json.load(fh)
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(target)


# ----------------------------------------------------------------------------- what is read


def test_basic_facts(info, tiny_llama):
    assert info.source == tiny_llama
    assert info.is_local is True
    assert info.class_name == "LlamaForCausalLM"
    assert info.model_type == "llama"
    assert info.num_layers == 2
    assert info.hidden_size == 128
    assert info.max_positions == 512
    assert info.dtype == "bfloat16"
    assert info.dtype_bytes == 2
    assert info.layer_prefix == "model.layers"
    assert info.tied_embeddings is False


def test_param_count_matches_the_loaded_model(info, real_model):
    assert info.param_count == sum(p.numel() for p in real_model.parameters())


def test_linear_layers_match_the_loaded_model(info, real_model):
    import torch

    expected = [
        LinearLayer(name, m.in_features, m.out_features)
        for name, m in real_model.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    assert info.linear_layers == expected
    names = [layer.name for layer in info.linear_layers]
    assert "model.layers.1.mlp.down_proj" in names and "lm_head" in names
    down = next(layer for layer in info.linear_layers if layer.name == "model.layers.0.mlp.down_proj")
    assert (down.in_features, down.out_features) == (256, 128)


def test_module_names_are_the_loaded_models(info, real_model):
    assert info.module_names == [name for name, _ in real_model.named_modules() if name]


def test_no_weights_are_loaded(info):
    """The module tree lives on the meta device: shapes without memory."""
    params = list(info.meta_model.parameters())
    assert params
    assert all(p.device.type == "meta" for p in params)


def test_weight_bytes_from_safetensors_headers(info, tiny_llama):
    from safetensors import safe_open

    expected = 0
    with safe_open(f"{tiny_llama}/model.safetensors", framework="pt") as fh:
        for key in fh.keys():
            sl = fh.get_slice(key)
            n = 1
            for d in sl.get_shape():
                n *= d
            expected += n * SAFETENSORS_ITEMSIZE[sl.get_dtype()]
    assert info.weight_bytes_source == "safetensors headers"
    assert info.weight_bytes == expected
    assert info.weight_bytes == info.param_count * 2  # every tensor is stored in bf16


def test_weight_bytes_is_file_size_minus_header(info, tiny_llama):
    import os
    import struct

    path = f"{tiny_llama}/model.safetensors"
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
    assert info.weight_bytes == os.path.getsize(path) - 8 - header_len


def test_largest_layer_bytes(info, real_model):
    per_layer = [sum(p.numel() for p in layer.parameters()) * 2 for layer in real_model.model.layers]
    assert info.largest_layer_bytes == max(per_layer)


def test_odd_model_facts(tiny_llama_odd):
    info = inspect_model(tiny_llama_odd)
    assert info.hidden_size == 96
    q = next(layer for layer in info.linear_layers if layer.name == "model.layers.0.self_attn.q_proj")
    assert (q.in_features, q.out_features) == (96, 96)
    k = next(layer for layer in info.linear_layers if layer.name == "model.layers.0.self_attn.k_proj")
    assert k.out_features == 32  # one key/value head of 32


def test_without_safetensors_bytes_come_from_param_count(tiny_llama, tmp_path):
    folder = _config_only_copy(tiny_llama, tmp_path / "config-only")
    info = inspect_model(folder)
    assert info.weight_bytes_source == "parameter count x dtype"
    assert info.dtype == "bfloat16"  # from config.json
    assert info.weight_bytes == info.param_count * 2


def test_float32_config_without_weights(tiny_llama, tmp_path):
    folder = _config_only_copy(tiny_llama, tmp_path / "fp32", dtype="float32")
    info = inspect_model(folder)
    assert info.dtype == "float32"
    assert info.weight_bytes == info.param_count * 4


def test_stored_dtype_wins_over_config(tiny_llama, tmp_path):
    folder = _config_only_copy(tiny_llama, tmp_path / "mismatch", dtype="float32")
    shutil.copy(f"{tiny_llama}/model.safetensors", f"{folder}/model.safetensors")
    info = inspect_model(folder)
    assert info.dtype == "bfloat16"
    assert info.weight_bytes_source == "safetensors headers"


def test_unreadable_safetensors_falls_back(tiny_llama, tmp_path):
    folder = _config_only_copy(tiny_llama, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"\x05\x00")
    info = inspect_model(folder)
    assert info.weight_bytes_source == "parameter count x dtype"
    assert info.weight_bytes == info.param_count * 2


def test_max_positions_from_gpt2_n_positions_and_tied_embeddings(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=96, vocab_size=64).save_pretrained(tmp_path / "gpt2")
    info = inspect_model(str(tmp_path / "gpt2"))
    assert info.max_positions == 96
    assert info.tied_embeddings is True
    assert info.layer_prefix == "transformer.h"
    assert info.dtype == "float32" and info.weight_bytes == info.param_count * 4


def test_home_relative_path(tiny_llama, monkeypatch):
    import os

    parent, name = os.path.split(tiny_llama)
    monkeypatch.setenv("HOME", parent)
    info = inspect_model(f"~/{name}")
    assert info.is_local and info.class_name == "LlamaForCausalLM"
    assert info.weight_bytes_source == "safetensors headers"


# ----------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    path = str(tmp_path / "no-such-model")
    with pytest.raises(ModelNotFoundError) as info:
        inspect_model(path)
    assert "does not exist" in str(info.value)
    assert path in str(info.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError) as info:
        inspect_model(str(tmp_path))
    assert "has no config.json" in str(info.value)


def test_file_instead_of_folder(tiny_llama):
    with pytest.raises(ModelNotFoundError) as info:
        inspect_model(f"{tiny_llama}/config.json")
    assert "is a file" in str(info.value)
    assert "folder that holds config.json" in str(info.value)


def test_model_not_found_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        inspect_model(str(tmp_path / "nothing"))


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        inspect_model("qwodel-test/no-such-model")
    assert "'qwodel-test/no-such-model'" in str(info.value)
    assert "Hugging Face Hub" in str(info.value)


def test_broken_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="Could not read the configuration"):
        inspect_model(str(tmp_path))


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwodel-made-up"}), encoding="utf-8")
    with pytest.raises(UnsupportedModelError) as info:
        inspect_model(str(tmp_path))
    assert "transformers does not know the architecture" in str(info.value)
    assert "qwodel-made-up" in str(info.value)


def test_remote_code_needs_opt_in(tmp_path):
    config = {
        "model_type": "qwodel-custom",
        "auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UnsupportedModelError) as info:
        inspect_model(str(tmp_path))
    assert "trust_remote_code=True" in str(info.value)


def test_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as info:
        inspect_model(str(tmp_path))
    assert "ViTConfig" in str(info.value)
    assert "not a causal language model" in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("org/name", True),
        ("gpt2", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("./local", False),
        ("/abs/path", False),
        ("~/models/x", False),
        ("a/b/c", False),
        ("org/", False),
        ("org name", False),
    ],
)
def test_is_hub_id(text, expected):
    assert is_hub_id(text) is expected
