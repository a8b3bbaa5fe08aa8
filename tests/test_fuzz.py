"""Property-based tests (hypothesis): no input produces an internal traceback or writes outside the output.

Four surfaces: settings (``make_settings`` with any keyword and value), dataset specifications
(``read_source`` and ``make_plan`` with any source), CLI argument lists (``qwodel_nb.cli.main``)
and ``%%qwodel`` cells (a real IPython shell). Only :class:`QwodelError` subclasses may escape the
API, the CLI exits 0 or 2 with one error line, the magic shows messages, never a traceback; and
every file outside the output folders named stays as it was.

Examples are deterministic in CI (profile ``ci`` in conftest.py); ``QWODEL_FUZZ=explore`` searches
longer and at random. ``--debug`` is left out of the CLI's arguments: it exists to show tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest

pytest.importorskip("hypothesis")

from hypothesis import assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qwodel_nb import QwodelError  # noqa: E402
from qwodel_nb.cli import main  # noqa: E402
from qwodel_nb.engine.calibration import RawCalibration, read_source  # noqa: E402
from qwodel_nb.engine.settings import ALIASES, Settings, field_names, make_settings  # noqa: E402

# ----------------------------------------------------------------------------- strategies

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_tricky_text = st.sampled_from([
    "", " ", "auto", "AUTO", "0", "-1", "1e3", "nan", "inf", "true", "no", "re:(", "re:.*", "re:a{99999999999}",
    "lm_head", "../..", "~", "/", ".", "..", "a:b", "a:", ":b", "org/name", "wikitext:wikitext-2-raw-v1",
    "x.json", "x.csv", "\x00", "hf_" + "A" * 20, "{", "}", "{{x}}", "%s", "\n", "cuda:1", "gpu", "bf16",
])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    _text, _tricky_text, st.binary(max_size=8),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(_text, inner, max_size=3)), max_leaves=8)
_keys = st.one_of(st.sampled_from(sorted(set(field_names()) | set(ALIASES))), _text)


def _examples(n: int) -> int:
    """``n`` examples in CI, ten times as many when exploring."""
    return n * 10 if os.environ.get("QWODEL_FUZZ") == "explore" else n


def _one_line_message(exc: QwodelError) -> None:
    assert exc.message and "\n" not in exc.message, repr(exc.message)


class Tree:
    """Every file under some folders, with its size and modification time, to see what changed."""

    def __init__(self, *roots, allowed=()):
        self.roots, self.allowed = [str(r) for r in roots], [os.path.abspath(str(a)) for a in allowed]
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, int]]:
        found = {}
        for root in self.roots:
            for folder, _, files in os.walk(root):
                if any(os.path.abspath(folder).startswith(a) for a in self.allowed):
                    continue
                for name in files:
                    path = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        info = os.stat(path)
                        found[path] = (info.st_size, info.st_mtime_ns)
        return found

    def assert_unchanged(self) -> None:
        after = self.snapshot()
        assert after == self.before, sorted(set(after.items()) ^ set(self.before.items()))[:5]
        for root in self.roots:
            for folder, dirs, _ in os.walk(root):
                assert not [d for d in dirs if d.startswith(".qwodel-tmp")], f"staging left in {folder}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_llama, calibration_texts):
    """A working folder holding calibration files of several kinds; outputs go under its ``outs``."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "cal.txt").write_text("\n\n".join(calibration_texts[:6]))
    (root / "cal.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in calibration_texts[:6]))
    (root / "chat.json").write_text(json.dumps([{"messages": [{"role": "user", "content": t}]} for t in calibration_texts[:3]]))
    (root / "empty.txt").write_text("\n \n")
    (root / "bad.json").write_text("{not json")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x9c")
    (root / "outs").mkdir()
    return root


@contextlib.contextmanager
def inside(folder):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


# ----------------------------------------------------------------------------- settings


@settings(max_examples=_examples(300))
@given(st.dictionaries(_keys, _values, max_size=6), st.one_of(_values, _tricky_text))
def test_settings_accept_or_refuse_clearly(options, model):
    options = {"model": model, **options}
    try:
        result = make_settings(**options)
    except QwodelError as exc:
        _one_line_message(exc)
        return
    assert isinstance(result, Settings)
    json.dumps(result.public_dict(), default=str)
    repr(result)


# ----------------------------------------------------------------------------- dataset specifications

_sources = st.one_of(
    _text, _tricky_text,
    st.sampled_from(["cal.txt", "cal.jsonl", "chat.json", "empty.txt", "bad.json", "binary.txt", "missing.jsonl",
                     "outs", "./", "no/such/dir/", "local-org/data:sub"]),
    st.lists(st.one_of(_text, _scalars), max_size=5),
)


@settings(max_examples=_examples(200))
@given(_sources, st.one_of(st.just("train"), _text), st.one_of(st.none(), _text, st.just("text"), st.just("messages")))
def test_dataset_specs_read_or_refuse_clearly(sandbox, source, split, column):
    tree = Tree(sandbox)
    with inside(sandbox):
        try:
            raw = read_source(source, split, column)
        except QwodelError as exc:
            _one_line_message(exc)
        else:
            assert isinstance(raw, RawCalibration) and all(raw.rows)
    tree.assert_unchanged()


@pytest.fixture(scope="module")
def tiny_info(tiny_llama):
    from qwodel_nb.engine.model_info import inspect_model

    return inspect_model(tiny_llama)


@settings(max_examples=_examples(60))
@given(_sources, st.dictionaries(st.sampled_from(["num_samples", "seq_len", "batch_size", "text_column", "group_size",
                                                  "ignore", "calibration_split"]), _values, max_size=3))
def test_plans_from_any_dataset_spec(sandbox, tiny_llama, tiny_info, source, options):
    from qwodel_nb.engine.plan import make_plan

    tree = Tree(sandbox, os.path.dirname(tiny_llama))
    with inside(sandbox):
        try:
            plan = make_plan(make_settings(model=tiny_llama, calibration_dataset=source, **options),
                             require_output=False, model_info=tiny_info)
        except QwodelError as exc:
            _one_line_message(exc)
        else:
            assert 1 <= plan.num_samples <= len(plan.raw_calibration)
    tree.assert_unchanged()


# ----------------------------------------------------------------------------- the command line

_OPTIONS = ["--backend", "--format", "--output", "-o", "--calibration-dataset", "--calibration-split", "--text-column",
            "--token", "--batch-size", "--seq-len", "--num-samples", "--ignore", "--mappings", "--group-size", "--dtype",
            "--device", "--seed"]
_FLAGS = ["--symmetric", "--overwrite", "--trust-remote-code", "--help", "--version", "-h"]


_PLAUSIBLE = {
    "--backend": ["awq", "gptq"], "--format": ["int4", "int8"], "--output": ["outs/o", "outs/p", "cal.txt"],
    "-o": ["outs/q"], "--calibration-dataset": ["cal.txt", "cal.jsonl", "chat.json", "empty.txt", "bad.json",
                                                "binary.txt", "missing.txt", "org/data", "outs"],
    "--calibration-split": ["train", "test"], "--text-column": ["text", "messages", "nope"],
    "--token": ["hf_" + "B" * 24, ""], "--batch-size": ["1", "2", "0", "many"], "--seq-len": ["16", "4", "auto"],
    "--num-samples": ["2", "0", "-1"], "--ignore": ["lm_head", "re:.*down_proj$", "re:(", "re:.*o_proj$"],
    "--mappings": ["bad.json", "cal.jsonl", "missing.yaml"], "--group-size": ["32", "64", "100"],
    "--dtype": ["auto", "bf16", "int3"], "--device": ["auto", "cpu", "cuda", "cuda:1", "tpu"], "--seed": ["0", "x"],
}


@st.composite
def argvs(draw, model):
    """Mostly well-formed command lines with plausible, often wrong, values; sometimes anything at all."""
    command = draw(st.sampled_from(["quantize", "quantize", "plan", "plan", "vram"]) if draw(st.integers(0, 9)) else _text)
    assume(command != "demo")
    words = [command, draw(st.sampled_from([model, model, model, "missing-model", "org/name", "."]) | _text)]
    if command in ("quantize", "plan") and draw(st.integers(0, 3)):  # later options may override these
        words += ["--calibration-dataset", "cal.txt"] + (["--output", "outs/o"] if draw(st.integers(0, 3)) else [])
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 5)):
            option = draw(st.sampled_from(sorted(_PLAUSIBLE) + _FLAGS[:3]))
        else:
            option = draw(st.sampled_from(_FLAGS) | _text)
        words.append(option)
        if option in _PLAUSIBLE:
            words.append(draw(st.sampled_from(_PLAUSIBLE[option])) if draw(st.integers(0, 4)) else draw(_tricky_text | _text))
    if not draw(st.integers(0, 9)):
        words = draw(st.permutations(words))
    if command == "quantize":  # a valid run stays small
        words += ["--num-samples", "2", "--seq-len", "16"]
    return [w for w in words if "\x00" not in w]


@settings(max_examples=_examples(80))
@given(st.data())
def test_cli_exits_0_or_2_with_one_line(sandbox, tiny_llama, capsys, data):
    argv = data.draw(argvs(tiny_llama))
    named = [os.path.join(sandbox, argv[i + 1]) for i, w in enumerate(argv[:-1]) if w in ("--output", "-o")]
    tree = Tree(sandbox, os.path.dirname(tiny_llama), allowed=[sandbox / "outs", *named])  # the outputs asked for
    with inside(sandbox):
        code = main(argv)
    captured = capsys.readouterr()
    event(f"exit code {code}")
    assert code in (0, 2), (argv, code, captured.err[-2000:])
    assert "Traceback" not in captured.err + captured.out, argv
    if code == 2:
        errors = [line for line in captured.err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("qwodel"), (argv, captured.err[-2000:])
    tree.assert_unchanged()


# ----------------------------------------------------------------------------- the %%qwodel cell


@pytest.fixture(scope="module")
def shell(tiny_llama, calibration_texts):
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=config)
    sh.run_line_magic("load_ext", "qwodel_nb")
    sh.user_ns.update(model_dir=tiny_llama, texts=calibration_texts[:6], name="fuzzed")
    yield sh
    sh.run_line_magic("unload_ext", "qwodel_nb")


_BODY = {
    "calibration": ["{texts}", "cal.txt", "cal.jsonl", "chat.json", "empty.txt", "missing.txt", "{nothing}", "outs"],
    "num_samples": [2, 0, "auto", "x", 2.5], "seq_len": [16, 4, "auto"], "batch_size": [1, 2, 0],
    "group_size": [32, 64, 100], "symmetric": [True, "maybe"], "ignore": [["lm_head"], "re:(", ["re:.*down_proj$"]],
    "dtype": ["auto", "bf16", "int3"], "device": ["auto", "cpu", "cuda:1"], "text_column": ["text", "nope"],
    "overwrite": [True, False], "seed": [0, "x"], "trust_remote_code": [False, True, "yes"],
    "mappings": [[{"smooth_layer": "re:.*input_layernorm$", "balance_layers": ["re:.*q_proj$", "re:.*k_proj$",
                                                                              "re:.*v_proj$"]}], "x", [{"a": 1}]],
    "eval_text": ["held-out text for the evaluation", ""], "calibration_split": ["train", "test"],
}


@st.composite
def cells(draw, model):
    """A ``%%qwodel`` line and body: mostly YAML with real keys and plausible values, sometimes any text."""
    import yaml

    if draw(st.integers(0, 4)):
        line = " ".join(draw(st.lists(st.sampled_from(["s", "--dry-run", "--dry-run", "--no-plot", "--yes", "--evaluate",
                                                       "-y"]), max_size=3, unique=True)))
    else:
        line = " ".join(draw(st.lists(st.sampled_from(["1x", "'", "--dryrun", "s", "--yes"]) | _text, max_size=3)))
    if not draw(st.integers(0, 4)):  # free text: YAML or not
        return line, draw(st.text(max_size=120))
    body = {}
    for key in draw(st.lists(st.sampled_from(sorted(_BODY)), max_size=4, unique=True)):
        body[key] = draw(st.sampled_from(_BODY[key])) if draw(st.integers(0, 4)) else draw(_values)
    if not draw(st.integers(0, 5)):
        body[draw(_text)] = draw(_values)
    head = draw(st.sampled_from([f"model: {model}", f"model: {model}", "model: missing-model", "", "model: {model_dir}"]))
    out = draw(st.sampled_from(["output: outs/cell", "output: outs/cell", "", "output: outs/{name}"]))
    try:
        text = yaml.safe_dump(body, default_flow_style=False, allow_unicode=True) if body else ""
    except yaml.YAMLError:
        text = json.dumps(body, default=str)
    if "calibration" not in body:
        text += "calibration: '{texts}'\n"
    if "num_samples" not in body:
        text += "num_samples: 2\n"
    if "seq_len" not in body:
        text += "seq_len: 16\n"
    return line, "\n".join([head, out, text])


@settings(max_examples=_examples(60))
@given(st.data())
def test_magic_cells_show_messages_never_tracebacks(sandbox, tiny_llama, shell, data):
    from IPython.core.error import UsageError
    from IPython.utils.capture import capture_output

    line, body = data.draw(cells(tiny_llama))
    assume("\x00" not in body)
    tree = Tree(sandbox, os.path.dirname(tiny_llama), allowed=[sandbox / "outs"])
    with inside(sandbox), capture_output() as cap:
        result = shell.run_cell(f"%%qwodel {line}\n{body}")
    shown = [o.data.get("text/plain", "") for o in cap.outputs]
    if body == "" and isinstance(result.error_in_exec, UsageError):
        return  # IPython itself refuses a cell magic without a body, in one line, before qwodel is called
    assert result.error_in_exec is None, (line, body, result.error_in_exec)
    assert "Traceback" not in cap.stdout + cap.stderr + "".join(shown), (line, body)
    html = "".join(o.data.get("text/html", "") for o in cap.outputs)
    event("result shown" if "<b>Result</b>" in html else "plan shown" if "<b>Plan</b>" in html
          else "message" if any(t.startswith("qwodel ") for t in shown) else "other")
    for text in shown:
        if text.startswith("qwodel error"):
            assert "\n" not in text, text
    tree.assert_unchanged()


