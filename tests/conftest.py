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


@pytest.fixture
def no_ambient_token(monkeypatch, tmp_path):
    """No token in the environment, and an empty Hugging Face login file location."""
    import huggingface_hub.constants as hf_constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    token_path = tmp_path / "hf-home" / "token"
    token_path.parent.mkdir()
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    return token_path


class FakeHub:
    """Answers of the Hugging Face Hub, at the HTTP boundary: huggingface_hub's own client, a fake server.

    ``gated`` repositories refuse everyone (401 without a token, 403 with one), as a gated model
    does before its terms are accepted; every other repository does not exist. Each request is
    recorded with its Authorization header, so a test can see which token reached the hub.
    """

    def __init__(self, gated=("qwodel-test/gated-model",)):
        self.gated = set(gated)
        self.requests: list[tuple[str, str, str | None]] = []

    def __call__(self, request):
        import httpx

        auth = request.headers.get("authorization")
        self.requests.append((request.method, str(request.url), auth))
        repo = "/".join(request.url.path.strip("/").split("/")[:2])
        if repo in self.gated or any(f"/{g}" in request.url.path for g in self.gated):
            status, message = (403, f"Access to model {repo} is restricted and you are not in the authorized list.") \
                if auth else (401, f"Access to model {repo} is restricted. You must be authenticated to access it.")
            return httpx.Response(status, headers={"X-Error-Code": "GatedRepo", "X-Error-Message": message})
        return httpx.Response(404, headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})

    def tokens_sent(self) -> set[str]:
        return {auth.split(" ", 1)[1] for _, _, auth in self.requests if auth}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, no_ambient_token):
    """The hub client online, talking to :class:`FakeHub` instead of the network, with an empty cache."""
    import httpx
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import _http

    hub = FakeHub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _http.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub), follow_redirects=True,
                                                  event_hooks={"request": [_http.hf_request_event_hook]}))
    yield hub
    _http.set_client_factory(_http.default_client_factory)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m qwodel_nb`` child: offline, and importing this same checkout.

    Without PYTHONPATH a child started in another folder imports whichever qwodel_nb is installed,
    which need not be the code under test.
    """
    import qwodel_nb

    root = os.path.dirname(os.path.dirname(os.path.abspath(qwodel_nb.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONUNBUFFERED="1", PYTHONPATH=path, **extra)


try:  # property-based tests: deterministic and modest in CI; QWODEL_FUZZ=explore for a longer random search
    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                          HealthCheck.filter_too_much, HealthCheck.data_too_large])
    settings.register_profile("ci", derandomize=True, print_blob=True, **_common)
    settings.register_profile("explore", max_examples=2000, **_common)
    settings.load_profile(os.environ.get("QWODEL_FUZZ", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass


@pytest.fixture(scope="module")
def shell():
    """An IPython shell with the extension loaded, once per test module that asks for it."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=config)
    sh.run_line_magic("load_ext", "qwodel_nb")
    yield sh
    sh.run_line_magic("unload_ext", "qwodel_nb")
