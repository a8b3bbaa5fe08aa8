"""Secret hides its value everywhere; resolve_token picks argument, then HF_TOKEN, then the saved login."""

from __future__ import annotations

import copy
import pickle

import pytest

from qwodel_nb.engine.secrets import Secret, redact, resolve_token

VALUE = "hf_SecretValue1234567890abcdef"
OTHER = "hf_AnotherToken0987654321zyxwv"


# ----------------------------------------------------------------------------- Secret


def test_reveal_returns_stripped_value():
    assert Secret(f"  {VALUE}\n").reveal() == VALUE


@pytest.mark.parametrize("bad", ["", "   ", None, 42])
def test_empty_or_non_text_is_refused(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        Secret(bad)


def test_repr_and_str_never_show_the_value():
    secret = Secret(VALUE, "HF_TOKEN")
    for text in (repr(secret), str(secret), f"{secret}", "%s" % secret, repr([secret]), repr({"t": secret})):
        assert VALUE not in text
        assert "***" in text
    assert repr(secret) == "Secret(***, source='HF_TOKEN')"


def test_default_source_is_argument():
    assert Secret(VALUE).source == "argument"


def test_cannot_be_pickled():
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(VALUE))


def test_cannot_be_pickled_inside_a_container():
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"settings": [Secret(VALUE)]})


def test_deepcopy_returns_the_same_object():
    secret = Secret(VALUE)
    assert copy.deepcopy(secret) is secret
    holder = copy.deepcopy({"token": secret})
    assert holder["token"] is secret


def test_has_no_instance_dict():
    """__slots__: no __dict__ that a generic serializer could dump the value from."""
    secret = Secret(VALUE)
    assert not hasattr(secret, "__dict__")
    with pytest.raises(AttributeError):
        secret.extra = 1  # type: ignore[attr-defined]


def test_equality_and_hash_follow_the_value():
    assert Secret(VALUE, "argument") == Secret(VALUE, "HF_TOKEN")
    assert Secret(VALUE) != Secret(OTHER)
    assert Secret(VALUE) != VALUE  # never equal to the bare string
    assert len({Secret(VALUE), Secret(VALUE, "HF_TOKEN"), Secret(OTHER)}) == 2


# ----------------------------------------------------------------------------- resolve_token


def test_nothing_anywhere_gives_none(no_ambient_token):
    assert resolve_token(None) is None


def test_explicit_string_wins(no_ambient_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", OTHER)
    no_ambient_token.write_text("hf_LoginFileToken123456789")
    secret = resolve_token(VALUE)
    assert secret.reveal() == VALUE
    assert secret.source == "argument"


def test_explicit_secret_is_returned_as_is(no_ambient_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", OTHER)
    given = Secret(VALUE, "somewhere")
    assert resolve_token(given) is given


def test_empty_argument_falls_back_to_env(no_ambient_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", OTHER)
    secret = resolve_token("")
    assert secret.reveal() == OTHER and secret.source == "HF_TOKEN"


def test_env_wins_over_login(no_ambient_token, monkeypatch):
    no_ambient_token.write_text("hf_LoginFileToken123456789")
    monkeypatch.setenv("HF_TOKEN", f" {OTHER} ")
    secret = resolve_token(None)
    assert secret.reveal() == OTHER
    assert secret.source == "HF_TOKEN"


def test_legacy_env_name(no_ambient_token, monkeypatch):
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", OTHER)
    secret = resolve_token(None)
    assert secret.reveal() == OTHER and secret.source == "HF_TOKEN"


def test_blank_env_is_ignored(no_ambient_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "   ")
    assert resolve_token(None) is None


def test_saved_login_is_last(no_ambient_token):
    no_ambient_token.write_text("hf_LoginFileToken123456789\n")
    secret = resolve_token(None)
    assert secret.reveal() == "hf_LoginFileToken123456789"
    assert secret.source == "huggingface login"
    assert "hf_LoginFileToken" not in repr(secret)


# ----------------------------------------------------------------------------- redact


def test_redact_masks_given_secret_everywhere():
    secret = Secret("plain-token-without-prefix")
    text = "url?token=plain-token-without-prefix and again plain-token-without-prefix"
    out = redact(text, secret)
    assert "plain-token-without-prefix" not in out
    assert out.count("***") == 2


def test_redact_masks_anything_shaped_like_a_hub_token():
    out = redact(f"401 Client Error for token {VALUE}: unauthorized")
    assert VALUE not in out
    assert out == "401 Client Error for token ***: unauthorized"


def test_redact_leaves_short_hf_words_and_none_secrets():
    text = "see hf_hub and hf_abc"  # too short to be a token
    assert redact(text, None) == text


def test_redact_several_secrets():
    a, b = Secret("first-secret-xyz"), Secret("second-secret-xyz")
    out = redact("first-secret-xyz / second-secret-xyz", a, None, b)
    assert out == "*** / ***"
