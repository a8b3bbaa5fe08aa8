"""The token never leaves: real AWQ runs through the CLI, the Session and the magic, every artifact scanned.

Fake tokens are given by argument, by ``HF_TOKEN`` and from a notebook variable, with every
library's logging at DEBUG. Then the token is looked for in: every file the run wrote (output
folder, datasets cache), standard output and error (file-descriptor level), log records, the
event stream, the repr and str of every object a user can print, the notebook's display outputs,
and the text of exceptions (including a hub refusal whose server message echoes the token).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback

import pytest

pytest.importorskip("IPython")

from qwodel_nb import ModelNotFoundError, Quantizer, Session  # noqa: E402
from qwodel_nb.cli import main  # noqa: E402
from conftest import subprocess_env  # noqa: E402

ARG_TOKEN = "hf_" + "ArgumentTokenNeverShown" * 2
ENV_TOKEN = "hf_" + "EnvironmentTokenNeverShown" * 2
PLAIN_TOKEN = "plain-secret-without-the-hf-prefix-0123456789"  # masked only because qwodel knows it is the token
RUN = dict(num_samples=4, seq_len=32)


def _files_text(*folders) -> str:
    chunks = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    chunks.append(f"{os.path.join(root, name)}\n" + fh.read().decode("latin-1"))
    return "\n".join(chunks)


def _assert_absent(token: str, text: str, where: str) -> None:
    assert text, f"nothing was collected from {where}"
    assert token not in text, f"the token appears in {where}"


@pytest.fixture
def debug_logging():
    """Every Python logger at DEBUG, transformers' included, for the duration of a test."""
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    level = root.level
    verbosity = hf_logging.get_verbosity()
    root.setLevel(logging.DEBUG)
    hf_logging.set_verbosity_debug()
    hf_logging.enable_propagation()
    yield
    root.setLevel(level)
    hf_logging.set_verbosity(verbosity)
    hf_logging.disable_propagation()


def test_cli_with_token_argument_and_debug_logs(tiny_llama, tmp_path, calibration_file):
    out = tmp_path / "out"
    env = subprocess_env(HF_TOKEN=ENV_TOKEN)
    proc = subprocess.run(
        [sys.executable, "-m", "qwodel_nb", "--debug", "quantize", tiny_llama, "--output", str(out),
         "--calibration-dataset", calibration_file, "--token", ARG_TOKEN, "--num-samples", "4", "--seq-len", "32"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEBUG" in proc.stderr  # the debug logs really were on
    for token in (ARG_TOKEN, ENV_TOKEN):
        _assert_absent(token, proc.stdout, "CLI standard output")
        _assert_absent(token, proc.stderr, "CLI standard error (debug logs, progress)")
        _assert_absent(token, _files_text(tmp_path), "the files of the run")
    assert "shell history" in proc.stderr  # the advice against --token


def test_cli_errors_with_tokens(tiny_llama, tmp_path, capsys):
    """Usage errors echo the wrong argument, the plan names the token's source: no token in either."""
    assert main(["quantize", tiny_llama, "--tokn", ARG_TOKEN]) == 2
    assert main(["plan", tiny_llama, "--token", ARG_TOKEN, "--seq-len", ARG_TOKEN]) == 2
    captured = capsys.readouterr()
    _assert_absent(ARG_TOKEN, captured.out + captured.err, "CLI errors")
    assert "unrecognized arguments: --tokn ***" in captured.err


def test_session_with_hf_token_and_debug_logs(tiny_llama, offline_wikitext, monkeypatch, capfd, caplog, debug_logging):
    """The default hub calibration dataset (served offline from a local folder), the token from HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    events = []
    with caplog.at_level(logging.DEBUG):
        s = Session(model=tiny_llama, output="./out", **RUN)
        seen = [repr(s), str(s.vram()), repr(s.plan()), s.plan()._repr_html_(), str(s.preview(2)),
                s.preview(2)._repr_html_()]
        result = s.run(callbacks=[events.append])
        seen += [repr(s), s.status(), repr(s.settings), repr(s.last_plan), str(s.last_plan.as_dict()),
                 repr(result), str(result), result._repr_html_(), str(result.summary), repr(result.stats),
                 str(result.stats.to_records()), repr(s.settings.public_dict())]
    captured = capfd.readouterr()
    assert s.last_plan.token is not None and s.last_plan.token.source == "HF_TOKEN"
    assert "DEBUG" in caplog.text
    _assert_absent(ENV_TOKEN, "\n".join(seen), "reprs and views")
    _assert_absent(ENV_TOKEN, "\n".join(repr(e) for e in events), "the event stream")
    _assert_absent(ENV_TOKEN, caplog.text, "log records")
    _assert_absent(ENV_TOKEN, captured.out + captured.err, "standard output and error")
    _assert_absent(ENV_TOKEN, _files_text(offline_wikitext), "output folder and datasets cache")


def test_quantizer_with_a_plain_token_argument(tiny_llama, tmp_path, calibration_texts, capfd, caplog, debug_logging):
    """A token without the hf_ prefix, which no pattern would catch, is kept out too."""
    with caplog.at_level(logging.DEBUG):
        q = Quantizer(model_path=tiny_llama, output_dir=str(tmp_path / "out"), calibration_dataset=calibration_texts,
                      token=PLAIN_TOKEN, num_samples=4, seq_length=32)
        q.quantize()
    captured = capfd.readouterr()
    text = "\n".join([repr(q), repr(q.settings), repr(q.last_plan), str(q.last_plan.as_dict()), repr(q.last_result),
                      str(q.last_result.summary), caplog.text, captured.out + captured.err, _files_text(tmp_path)])
    _assert_absent(PLAIN_TOKEN, text, "the Quantizer's reprs, logs, output and files")


def test_exceptions_never_carry_the_token(fake_hub, monkeypatch, tmp_path):
    """The hub refuses a gated model and its message echoes the token: the error, status and traceback do not."""
    echo = fake_hub.__call__

    def echoing(request):
        response = echo(request)
        response.headers["X-Error-Message"] += f" (credentials {request.headers.get('authorization')})"
        return response

    from huggingface_hub.utils import _http
    import httpx

    _http.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(echoing),
                                                  event_hooks={"request": [_http.hf_request_event_hook]}))
    monkeypatch.setenv("HF_TOKEN", PLAIN_TOKEN)
    s = Session(model="qwodel-test/gated-model", output=str(tmp_path / "out"))
    with pytest.raises(ModelNotFoundError) as info:
        s.run(progress=False)
    assert fake_hub.tokens_sent() == {PLAIN_TOKEN}  # it did reach the hub
    exc = info.value
    text = "\n".join([str(exc), repr(exc), s.status(), "".join(traceback.format_exception(exc)),
                      "".join(traceback.format_exception(exc.__context__)) if exc.__context__ else "x"])
    _assert_absent(PLAIN_TOKEN, text, "the exception, its chain and the session status")


def test_magic_with_a_token_variable_and_hf_token(tiny_llama, tmp_path, calibration_texts, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "qwodel_nb")
    try:
        shell.user_ns.update(model_dir=tiny_llama, out_dir=str(tmp_path / "out"), texts=calibration_texts, my_token=ARG_TOKEN)
        cells = [
            "%%qwodel s\nmodel: {model_dir}\noutput: {out_dir}\ncalibration: {texts}\ntoken: {my_token}\nnum_samples: 4\nseq_len: 32\n",
            "%qwodel status", "%qwodel plan", "%qwodel stats",
            "%%qwodel t --dry-run\nmodel: {model_dir}\ncalibration: {texts}\nnum_samples: 4\nseq_len: 32\n",  # HF_TOKEN
            "%%qwodel u\nmodel: {model_dir}\noutput: {out_dir}\nseq_len: {my_token}\n",  # an error quoting the value
        ]
        shown = []
        for cell in cells:
            with capture_output() as cap:
                result = shell.run_cell(cell)
            assert result.error_in_exec is None, result.error_in_exec
            shown += [cap.stdout, cap.stderr] + [str(v) for o in cap.outputs for v in o.data.values()]
        s = shell.user_ns["s"]
        assert s.state == "done" and shell.user_ns["t"].last_plan.token.source == "HF_TOKEN"
        shown += [repr(shell.user_ns[k]) for k in ("s", "t")] + [shell.user_ns[k].status() for k in ("s", "t")]
        for token in (ARG_TOKEN, ENV_TOKEN):
            _assert_absent(token, "\n".join(shown), "the notebook's outputs")
            _assert_absent(token, _files_text(tmp_path), "the files of the run")
    finally:
        shell.run_line_magic("unload_ext", "qwodel_nb")
