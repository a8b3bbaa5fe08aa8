"""%%qwodel and %qwodel through a real IPython shell, with real AWQ runs on a tiny Llama."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("IPython")

from IPython.utils.capture import capture_output  # noqa: E402

from qwodel_nb.magic_args import MagicError, parse_body, parse_cell_line, parse_line_command  # noqa: E402

TOKEN = "hf_QwodelTestToken0123456789abcdef"


class Shown:
    """What one cell put on screen: stdout, stderr and every displayed object's mime bundle."""

    def __init__(self, result, cap):
        self.result = result
        self.stdout, self.stderr = cap.stdout, cap.stderr
        self.outputs = [o.data for o in cap.outputs]

    @property
    def plain(self) -> list[str]:
        return [o.get("text/plain", "") for o in self.outputs]

    @property
    def everything(self) -> str:
        parts = [self.stdout, self.stderr]
        for data in self.outputs:
            parts += [v if isinstance(v, str) else repr(v) for v in data.values()]
        return "\n".join(parts)

    def has_image(self) -> bool:
        return any("image/png" in o for o in self.outputs)

    def assert_clean(self):
        assert self.result.error_in_exec is None, self.result.error_in_exec
        assert self.result.error_before_exec is None
        assert "Traceback" not in self.everything


def run(sh, cell: str) -> Shown:
    with capture_output() as cap:
        result = sh.run_cell(cell)
    return Shown(result, cap)


def magics(sh):
    return sh.magics_manager.registry["QwodelMagics"]


def _index(shown: Shown, needle: str) -> int:
    for i, data in enumerate(shown.outputs):
        if needle in data.get("text/html", "") or needle in data.get("text/plain", ""):
            return i
    raise AssertionError(f"{needle!r} not displayed; shown: {shown.plain}")


@pytest.fixture(scope="module")
def ran(shell, tiny_llama, calibration_texts, tmp_path_factory):
    """One real %%qwodel run shared by the tests that read it."""
    out = tmp_path_factory.mktemp("magic") / "out"
    shell.user_ns.update(model_dir=tiny_llama, out_dir=str(out), texts=calibration_texts)
    shown = run(shell, "%%qwodel s\n"
                       "model: {model_dir}\n"
                       "output: {out_dir}\n"
                       "calibration: {texts}   # a whole-value variable passes the list itself\n"
                       "num_samples: 4\nseq_len: 32\nbatch_size: 2\n")
    return shown, str(out)


# -- the cell magic, real run ------------------------------------------------------------------


def test_cell_runs_binds_the_session_and_shows_each_step_in_order(shell, ran):
    shown, out = ran
    shown.assert_clean()
    s = shell.user_ns["s"]
    assert type(s).__name__ == "Session" and s.state == "done"
    assert magics(shell).session is s
    assert s.settings.calibration_dataset == shell.user_ns["texts"]  # the object, not its text
    assert os.path.isfile(os.path.join(out, "config.json")) and s.result.output_path == out
    order = [_index(shown, "Headroom") if "Headroom" in shown.everything else _index(shown, "No GPU"),
             _index(shown, "<b>Plan</b>"), _index(shown, "<b>Calibration</b>")]
    figure = next(i for i, o in enumerate(shown.outputs) if "image/png" in o)
    result = _index(shown, "<b>Result</b>")
    assert order == sorted(order) and order[-1] < figure < result
    assert "qwodel" in shown.stderr  # the live progress bar


def test_line_magics_act_on_the_current_session(shell, ran):
    shown = run(shell, "%qwodel status")
    shown.assert_clean()
    assert "state='done'" in shown.stdout and ran[1] in shown.stdout
    shown = run(shell, "%qwodel plan")
    shown.assert_clean()
    assert "<b>Plan</b>" in shown.outputs[0]["text/html"]
    shown = run(shell, "%qwodel help")
    assert "%%qwodel [VAR]" in shown.stdout and "preview [n]" in shown.stdout
    shown = run(shell, "%qwodel preview 2")
    shown.assert_clean()
    assert "[1]" in shown.plain[0] and "[2]" not in shown.plain[0]
    shown = run(shell, "%qwodel stats")
    shown.assert_clean()
    assert "smooth_layer" in shown.plain[0] or "layer" in shown.plain[0]
    assert "text/html" in shown.outputs[0]  # a pandas DataFrame
    shown = run(shell, "%qwodel plot ratios")
    shown.assert_clean()
    assert shown.has_image()
    shown = run(shell, "%qwodel vram")
    shown.assert_clean()
    assert shown.outputs


def test_non_empty_output_needs_yes(shell, ran):
    _, out = ran
    before = sorted(os.listdir(out))
    shown = run(shell, "%%qwodel t\nmodel: {model_dir}\noutput: {out_dir}\ncalibration: {texts}\n")
    shown.assert_clean()
    assert "is not empty" in shown.everything and "--yes" in shown.everything and "overwrite: true" in shown.everything
    assert not shown.has_image() and "<b>Plan</b>" not in shown.everything
    assert sorted(os.listdir(out)) == before


def test_empty_body_reruns_and_autoplot_config_turns_the_plot_off(shell, ran):
    current = magics(shell).session
    assert current.settings.output == ran[1]
    run(shell, "%config QwodelMagics.autoplot = False")
    try:
        assert magics(shell).autoplot is False
        shown = run(shell, "%%qwodel again --yes\n# an empty body re-runs the current session\n")
    finally:
        run(shell, "%config QwodelMagics.autoplot = True")
    shown.assert_clean()
    assert shell.user_ns["again"] is current and current.state == "done"
    assert not shown.has_image()
    assert "<b>Result</b>" in shown.everything
    assert os.path.isfile(os.path.join(ran[1], "model.safetensors"))


# -- dry run, output_root -----------------------------------------------------------------------


def test_dry_run_writes_nothing_and_leaves_the_session_planned(shell, tiny_llama, calibration_file, tmp_path):
    out = tmp_path / "never"
    shell.user_ns.update(model_dir=tiny_llama, cal=calibration_file)
    shown = run(shell, f"%%qwodel d --dry-run\nmodel: {{model_dir}}\noutput: {out}\ncalibration: {{cal}}\n"
                       "num_samples: 4\nseq_len: 32\n")
    shown.assert_clean()
    d = shell.user_ns["d"]
    assert d.state == "planned" and d.result is None
    assert not out.exists()
    assert "<b>Plan</b>" in shown.everything and "<b>Calibration</b>" in shown.everything
    assert "<b>Result</b>" not in shown.everything and not shown.has_image()


def test_output_root_gives_a_default_output(shell, tiny_llama, tmp_path):
    shell.user_ns["model_dir"] = tiny_llama
    run(shell, f"%config QwodelMagics.output_root = {str(tmp_path)!r}")
    try:
        shown = run(shell, "%%qwodel r --dry-run\nmodel: {model_dir}\ncalibration: {texts}\nnum_samples: 4\nseq_len: 32\n")
    finally:
        run(shell, "%config QwodelMagics.output_root = None")
    shown.assert_clean()
    expected = os.path.join(str(tmp_path), os.path.basename(tiny_llama) + "-awq-int4")
    assert shell.user_ns["r"].settings.output == expected
    assert magics(shell).output_root is None


# -- mistakes: one message, no traceback -------------------------------------------------------------


@pytest.mark.parametrize("body, expected", [
    ("model: {model_dir}\noutput: ./x\nignore: [lm_head\n", ["YAML syntax error on line 3", "ignore: [lm_head"]),
    ("model: {model_dir}\nouptut: ./x\n", ["Unknown key 'ouptut'", "Did you mean 'output'?"]),
    ("model: {model_dir}\noutput: ./x\nnum_samples: many\n", ["'num_samples' must be a whole number"]),
    ("model: {model_dir}\noutput: ./x\nsymmetric: [1]\n", ["'symmetric' must be true or false"]),
    ("output: ./x\nnum_samples: 4\n", ["No model in the cell"]),
    ("model: {model_dir}\nnum_samples: 4\n", ["No output folder", "output_root"]),
    ("model: ./no/such/model\noutput: ./x\n", ["does not exist"]),
    ("model: {model_dir}\noutput: ./x\ncalibration: {no_such_variable}\n", ["{no_such_variable} names no notebook variable"]),
])
def test_user_errors_are_one_message_without_traceback(shell, tiny_llama, body, expected):
    shell.user_ns["model_dir"] = tiny_llama
    shown = run(shell, "%%qwodel bad\n" + body)
    shown.assert_clean()
    assert "qwodel error" in shown.everything
    for text in expected:
        assert text in shown.everything, shown.everything
    assert "<b>Plan</b>" not in shown.everything


def test_errors_of_line_magics_are_messages(shell):
    for line, text in [("%qwodel plto", "Did you mean 'plot'?"), ("%qwodel preview x", "number of samples")]:
        shown = run(shell, line)
        shown.assert_clean()
        assert text in shown.everything


def test_panel_opens_over_the_current_session_or_makes_one(shell, ran, tiny_llama):
    pytest.importorskip("ipywidgets")
    widget_view = "application/vnd.jupyter.widget-view+json"
    current = magics(shell).session
    finished = shell.user_ns["s"]  # the session of the real run
    magics(shell).session = finished
    try:
        shown = run(shell, "%qwodel panel")
        shown.assert_clean()
        panel = magics(shell).last_panel
        assert panel.session is finished and finished.state == "done"
        assert shown.outputs[0][widget_view]["model_id"] == panel.widget.model_id
        assert panel.results_tab.widget.children[0] is panel.results_tab.summary  # the finished run's results

        magics(shell).session = None
        shown = run(shell, "%qwodel panel")
        shown.assert_clean()
        empty = magics(shell).last_panel
        assert widget_view in shown.outputs[0] and empty.session is None and empty.run_button.disabled
        empty.form.rows["model"].control.value = tiny_llama  # typed into the panel
        assert magics(shell).session is empty.session and empty.session.settings.model == tiny_llama
    finally:
        magics(shell).session = current


def test_a_literal_token_is_warned_about_and_never_shown(shell, tiny_llama):
    shell.user_ns["model_dir"] = tiny_llama
    shown = run(shell, f"%%qwodel tok --dry-run\nmodel: {{model_dir}}\ntoken: {TOKEN}\n"
                       "calibration: {texts}\nnum_samples: 4\nseq_len: 32\n")
    shown.assert_clean()
    assert "qwodel warning" in shown.everything
    assert "HF_TOKEN" in shown.everything and "huggingface-cli login" in shown.everything
    assert shell.user_ns["tok"].state == "planned"
    # a message that would quote the token's value: the value is masked
    bad = run(shell, f"%%qwodel tok2\nmodel: {{model_dir}}\noutput: ./x\ntoken: {TOKEN}\nseq_len: {TOKEN}\n")
    bad.assert_clean()
    assert "'seq_len' must be" in bad.everything
    status = run(shell, "%qwodel status")
    for captured in (shown, bad, status):
        assert TOKEN not in captured.everything
    assert TOKEN not in repr(shell.user_ns["tok"]) and TOKEN not in shell.user_ns["tok"].status()
    assert TOKEN not in repr(shell.user_ns["tok"].settings)


def test_a_token_from_a_variable_draws_no_warning(shell, tiny_llama):
    shell.user_ns.update(model_dir=tiny_llama, my_token=TOKEN)
    shown = run(shell, "%%qwodel tok3 --dry-run\nmodel: {model_dir}\ntoken: {my_token}\n"
                       "calibration: {texts}\nnum_samples: 4\nseq_len: 32\n")
    shown.assert_clean()
    assert "qwodel warning" not in shown.everything and TOKEN not in shown.everything


# -- the extension ---------------------------------------------------------------------------------


def test_load_twice_unload_and_reload(shell):
    current = magics(shell).session
    run(shell, "%load_ext qwodel_nb")
    run(shell, "%load_ext qwodel_nb")
    assert sum(type(c).__name__ == "QwodelMagics" for c in shell.configurables) == 1
    run(shell, "%config QwodelMagics.preview_rows = 3")
    run(shell, "%unload_ext qwodel_nb")
    assert "qwodel" not in shell.magics_manager.magics["line"]
    assert "qwodel" not in shell.magics_manager.magics["cell"]
    assert not any(type(c).__name__ == "QwodelMagics" for c in shell.configurables)
    gone = run(shell, "%qwodel status")
    assert gone.result.error_in_exec is not None or gone.result.error_before_exec is not None
    run(shell, "%load_ext qwodel_nb")
    run(shell, "%reload_ext qwodel_nb")
    assert sum(type(c).__name__ == "QwodelMagics" for c in shell.configurables) == 1
    assert magics(shell).session is current  # the current session survives a reload
    assert magics(shell).preview_rows == 3  # and so does %config
    shown = run(shell, "%qwodel help")
    shown.assert_clean()
    assert "%%qwodel" in shown.stdout
    run(shell, "%config QwodelMagics.preview_rows = 5")


# -- the parsers alone --------------------------------------------------------------------------------


def test_body_variables_whole_values_and_text():
    ns = {"name": "m", "n": 8, "texts": ["a", "b"], "root": "/r"}
    body = parse_body("model: ./{name}\noutput: '{root}/{name}-{n}'\ncalibration: {texts}\nnum_samples: {n}\n"
                      "text_column: 'a{{b}}'\n", ns)
    assert body.options == {"model": "./m", "output": "/r/m-8", "calibration": ["a", "b"], "num_samples": 8,
                            "text_column": "a{b}"}
    assert not body.warnings and not body.empty
    assert parse_body("  # only a comment\n", ns).empty
    with pytest.raises(MagicError, match="whole value"):
        parse_body("output: ./x-{texts}\n", ns)
    with pytest.raises(MagicError, match="Did you mean 'texts'"):
        parse_body("calibration: {text}\n", ns)
    assert parse_body("model: m\ntoken: hf_abcdefgh12345\n", ns).warnings


def test_line_parsers():
    args = parse_cell_line("s --dry-run --yes")
    assert (args.var, args.dry_run, args.yes, args.no_plot, args.evaluate) == ("s", True, True, False, False)
    assert parse_cell_line("").var is None
    with pytest.raises(MagicError, match="Usage"):
        parse_cell_line("s --dryrun")
    with pytest.raises(MagicError, match="variable name"):
        parse_cell_line("1s")
    assert parse_line_command("preview 3").n == 3
    assert parse_line_command("plot scales").kind == "scales"
    assert parse_line_command("run --yes --no-plot").yes
    assert parse_line_command("").command == "help"
    with pytest.raises(MagicError):
        parse_line_command("status now")
