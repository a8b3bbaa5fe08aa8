"""plan_layout: default ignore list, group size choice, unsafe ignore lists, unsupported architectures."""

from __future__ import annotations

import dataclasses

import pytest

from qwodel_nb.engine.errors import SettingsError, UnsupportedModelError
from qwodel_nb.engine.layout import (
    DEFAULT_IGNORE,
    _balanced_layers,
    _check_ignore,
    choose_group_size,
    mapping_support,
    match_name,
    plan_layout,
)
from qwodel_nb.engine.model_info import LinearLayer, inspect_model

LAYER_SUFFIXES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
DECODER_LINEARS = tuple(f"model.layers.{i}.{s}" for i in range(2) for s in LAYER_SUFFIXES)


@pytest.fixture(scope="module")
def info(tiny_llama):
    return inspect_model(tiny_llama)


@pytest.fixture(scope="module")
def odd_info(tiny_llama_odd):
    return inspect_model(tiny_llama_odd)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny GPT-2: no AWQ mappings in llm-compressor and no Llama-style module names."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=64, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------- defaults


def test_default_layout(info):
    layout = plan_layout(info, None, None)
    assert layout.ignore == DEFAULT_IGNORE
    assert layout.ignore_source == "default"
    assert layout.quantized == DECODER_LINEARS
    assert layout.skipped == ("lm_head",)
    assert layout.group_size == 128
    assert layout.group_size_reason == "128 divides the input columns of every quantized layer"
    assert layout.mappings.source == "llm-compressor's mapping registry"


def test_mapping_support_for_llama(info):
    support = mapping_support(info)
    assert "re:.*down_proj$" in support.balance_patterns
    assert "re:.*input_layernorm$" in support.smooth_patterns
    assert len(support.mappings) == len(support.smooth_patterns)


def test_grouped_query_attention_skips_v_to_o(info):
    """v_proj (64 outputs) cannot scale o_proj (128 inputs): o_proj is not balanced, as in llm-compressor."""
    balanced = _balanced_layers(info, mapping_support(info))
    assert "model.layers.0.mlp.down_proj" in balanced
    assert "model.layers.0.self_attn.q_proj" in balanced
    assert "model.layers.0.self_attn.o_proj" not in balanced
    assert "lm_head" not in balanced


# ----------------------------------------------------------------------------- group size


def test_group_size_falls_back_to_32(odd_info):
    layout = plan_layout(odd_info, None, None)
    assert layout.group_size == 32
    reason = layout.group_size_reason
    assert "128 does not divide the 96 input columns of model.layers.0.self_attn.q_proj" in reason
    assert "32 is the largest size" in reason


def test_user_group_size_that_divides(info, odd_info):
    assert plan_layout(info, None, 64).group_size == 64
    assert plan_layout(info, None, 64).group_size_reason == "set by you"
    assert plan_layout(odd_info, None, 32).group_size == 32


def test_user_group_size_that_does_not_divide(odd_info):
    with pytest.raises(SettingsError) as info:
        plan_layout(odd_info, None, 128)
    msg = str(info.value)
    assert "group_size 128 does not divide the 96 input columns of model.layers.0.self_attn.q_proj" in msg
    assert "(and 13 more layers)" in msg  # every quantized layer: 96 and 192 inputs
    assert "use group_size=32" in msg


def test_user_group_size_64_on_width_96(odd_info):
    with pytest.raises(SettingsError) as info:
        plan_layout(odd_info, None, 64)
    msg = str(info.value)
    assert "(and 11 more layers)" in msg  # down_proj (192 inputs) is fine with 64
    assert "use group_size=32" in msg


def test_lm_head_counts_when_it_is_quantized(odd_info):
    """With a user ignore list without lm_head, lm_head (96 inputs) is quantized too."""
    layout = plan_layout(odd_info, (), None)
    assert "lm_head" in layout.quantized
    assert layout.skipped == ()
    assert layout.group_size == 32


def test_choose_group_size_no_supported_size():
    layers = [LinearLayer("a.proj", 256, 8), LinearLayer("b.proj", 100, 8)]
    with pytest.raises(UnsupportedModelError) as info:
        choose_group_size(layers, None)
    msg = str(info.value)
    assert "No supported group size (128, 64, 32) divides the 100 input columns of b.proj" in msg


def test_choose_group_size_request_with_nothing_that_fits():
    with pytest.raises(SettingsError) as info:
        choose_group_size([LinearLayer("x", 100, 8)], 32)
    assert "ignore that layer" in str(info.value)


def test_choose_group_size_prefers_64_over_32():
    size, reason = choose_group_size([LinearLayer("x", 192, 8), LinearLayer("y", 64, 8)], None)
    assert size == 64
    assert "128 does not divide the 192 input columns of x" in reason


# ----------------------------------------------------------------------------- ignore lists


def test_ignoring_a_balanced_layer(info):
    with pytest.raises(SettingsError) as err:
        plan_layout(info, ("lm_head", "re:.*down_proj$"), None)
    msg = str(err.value)
    assert "model.layers.0.mlp.down_proj" in msg
    assert "(and 1 more)" in msg
    assert "AWQ balances that layer" in msg
    assert "remove it from 'ignore'" in msg


def test_ignoring_q_proj_of_one_layer(info):
    with pytest.raises(SettingsError) as err:
        plan_layout(info, ("lm_head", "model.layers.1.self_attn.q_proj"), None)
    assert "model.layers.1.self_attn.q_proj" in str(err.value)


def test_fused_projections_must_be_ignored_together(info):
    """Checked on its own (no balanced layers): q/k/v and gate/up are all-or-none."""
    with pytest.raises(SettingsError) as err:
        _check_ignore(info, ("model.layers.0.self_attn.q_proj",), set())
    msg = str(err.value)
    assert "splits the fused projections of model.layers.0.self_attn (q_proj, k_proj, v_proj)" in msg
    assert "ignore model.layers.0.self_attn.k_proj, model.layers.0.self_attn.v_proj too" in msg

    with pytest.raises(SettingsError, match=r"fused projections of model.layers.1.mlp \(gate_proj, up_proj\)"):
        _check_ignore(info, ("re:model\\.layers\\.1\\.mlp\\.up_proj$",), set())


def test_fused_projections_ignored_together_is_fine(info):
    _check_ignore(info, ("re:model\\.layers\\.0\\.self_attn\\.[qkv]_proj$", "re:.*mlp\\.(gate|up)_proj$"), set())


def test_ignoring_unbalanced_o_proj_is_allowed(info):
    layout = plan_layout(info, ["lm_head", "re:.*o_proj$"], None)
    assert layout.ignore_source == "user"
    assert layout.skipped == ("model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj", "lm_head")
    assert not any(name.endswith("o_proj") for name in layout.quantized)
    assert len(layout.quantized) == 12


def test_ignore_everything(info):
    with pytest.raises(SettingsError, match="AWQ balances"):
        plan_layout(info, ("re:.*",), None)


def test_ignore_that_leaves_nothing(info):
    """A model whose only Linear layer is ignored: nothing is left to quantize."""
    only_head = dataclasses.replace(info, linear_layers=[LinearLayer("lm_head", 128, 573)])
    with pytest.raises(SettingsError) as err:
        plan_layout(only_head, ("lm_head",), None)
    assert "leaves no Linear layer to quantize" in str(err.value)


def test_match_name():
    assert match_name("model.layers.0.mlp.down_proj", "re:.*down_proj$")
    assert match_name("lm_head", "lm_head")
    assert not match_name("model.lm_head_extra", "lm_head")
    assert not match_name("model.layers.0.mlp.gate_proj", "re:.*mlp\\.gate$")


# ----------------------------------------------------------------------------- architectures


def test_unsupported_architecture_names_the_class(gpt2_dir):
    gpt2 = inspect_model(gpt2_dir)
    assert gpt2.class_name == "GPT2LMHeadModel"
    with pytest.raises(UnsupportedModelError) as err:
        plan_layout(gpt2, None, None)
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg
    assert "'gpt2'" in msg
    assert "no AWQ mappings" in msg
    assert "Llama layout" in msg


def test_unregistered_llama_like_class_uses_default_mappings(tmp_path):
    """Helium is not in llm-compressor's registry but has Llama's module names."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "helium", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, vocab_size=128,
    )
    config.save_pretrained(tmp_path)
    helium = inspect_model(str(tmp_path))
    assert helium.class_name == "HeliumForCausalLM"
    layout = plan_layout(helium, None, None)
    assert layout.mappings.source == "Llama-style default mappings (module names match)"
    assert layout.group_size == 64
