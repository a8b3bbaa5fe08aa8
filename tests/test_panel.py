"""The widget panel: fields, validation, tabs, real AWQ runs on a tiny Llama with progress, cancel
and results, in both run modes. Runs under ipywidgets 8 and 7.7.1 (``make test-widgets7``).

Buttons are pressed with ``button.click()`` and field values set as the browser would set them;
the assertions read the Session and the widgets' values. No kernel is running here, so the
foreground mode's message polling is exercised with a kernel stand-in (and a real ipykernel when
the widgets-7 environment provides one).
"""

from __future__ import annotations

import html
import json
import os
import sys
import threading
import time
import types

import pytest

ipywidgets = pytest.importorskip("ipywidgets")

import qwodel_nb  # noqa: E402
from qwodel_nb import Session, SettingsError  # noqa: E402
from qwodel_nb.display import VramView  # noqa: E402
from qwodel_nb.engine.plan import Placement  # noqa: E402
from qwodel_nb.engine.vram import GpuInfo, VramReport  # noqa: E402
from qwodel_nb.environment import in_colab, resolve_run_mode  # noqa: E402
from qwodel_nb.widgets import Panel  # noqa: E402
from qwodel_nb.widgets.progress import Throttle  # noqa: E402
from qwodel_nb.widgets.ui_poll import KernelPoller  # noqa: E402

RUN = dict(num_samples=8, seq_len=48, batch_size=2)
TOKEN = "hf_PanelTestToken0123456789abcdef"


def test_widgets_version_under_test():
    """Which ipywidgets this pass runs against (the widgets-7 pass sets QWODEL_EXPECT_IPYWIDGETS)."""
    expected = os.environ.get("QWODEL_EXPECT_IPYWIDGETS")
    print("ipywidgets", ipywidgets.__version__, "from", ipywidgets.__file__)
    if expected:
        assert ipywidgets.__version__ == expected


def _panel(model, out, texts, **kw) -> Panel:
    session = Session(model=model, output=str(out), calibration_dataset=texts, **RUN)
    return qwodel_nb.panel(session, run_mode=kw.pop("run_mode", "thread"), **kw)


def _type(panel: Panel, name: str, value) -> None:
    """What the browser does when a field loses focus: the widget's value changes."""
    panel.form.rows[name].control.value = value


def _message(panel: Panel, name: str) -> str:
    return panel.form.rows[name].error


def _leftovers(parent) -> list[str]:
    return [n for n in os.listdir(parent) if n.startswith(".qwodel-tmp")]


# -- a real run in a background thread ------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny_llama, calibration_texts, tmp_path_factory):
    """One real AWQ run pressed from the panel in thread mode: (panel, output folder, seconds)."""
    out = tmp_path_factory.mktemp("panel") / "out"
    panel = _panel(tiny_llama, out, calibration_texts)
    assert not panel.run_button.disabled and panel.cancel_button.disabled
    panel.status_lines = []  # every status line the page was sent during the run
    panel.progress.status.observe(lambda change: panel.status_lines.append(html.unescape(change["new"])), "value")
    started = time.monotonic()
    panel.run_button.click()
    assert panel.runner.running or panel.session.state == "done"  # click returned while AWQ runs
    assert panel.runner.wait(300)
    return panel, str(out), time.monotonic() - started


def test_thread_run_reaches_100_percent(finished):
    panel, out, seconds = finished
    assert panel.session.state == "done", panel.message.value
    assert panel.runner.outcome.state == "done"
    assert panel.progress.layers.value == panel.progress.layers.max == 2
    assert panel.progress.grid.value == panel.progress.grid.max == 20
    assert panel.progress.layers.bar_style == "success"
    assert "done: elapsed" in panel.progress.status.value
    assert any("AWQ: elapsed 0:" in line and ", ETA 0:" in line for line in panel.status_lines)
    assert any(line.startswith("loading the model") or "loading the model" in line for line in panel.status_lines)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert "Done" in panel.message.value and out in panel.message.value
    assert panel.run_button.disabled  # the output is not empty now: a second run needs another folder
    assert "is not empty" in _message(panel, "output")
    assert panel.cancel_button.disabled


def test_progress_updates_are_throttled(finished):
    panel, _, seconds = finished
    listener = panel.listener
    assert listener.events > 100  # 2 layers x 3 mappings x 20 grid points, and more
    # at most 10 redraws a second, plus one per phase start/end, layer end and the end of the run
    always = 4 * 2 + 2 + 1
    assert panel.progress.redraws <= 10 * seconds + always + 2
    assert panel.progress.redraws < listener.events


def test_results_tab_holds_summary_plot_and_snippet(finished):
    panel, out, _ = finished
    tab = panel.results_tab
    assert panel.tabs.selected_index == 4 and panel.tabs.get_title(4) == "Results"
    assert tab.widget.children == (tab.summary, tab.plot_kind, tab.plot_message, tab.plot)
    assert "<b>Result</b>" in tab.summary.value and out in tab.summary.value
    assert "Serve it with vLLM" in tab.summary.value and "from vllm import LLM" in tab.summary.value
    assert f"llm = LLM(model={out!r})" in tab.summary.value.replace("&#x27;", "'")
    assert tab.plot.value[:8] == b"\x89PNG\r\n\x1a\n" and tab.plot.format == "png"
    first = tab.plot.value
    tab.plot_kind.value = "ratios"
    assert tab.plot.value[:4] == b"\x89PNG" and tab.plot.value != first
    tab.plot_kind.value = "overview"


def test_auto_hints_come_from_the_plan_after_a_run(finished):
    panel, _, _ = finished
    rows = panel.form.rows
    assert not rows["num_samples"].auto.value and rows["num_samples"].control.value == "8"
    assert "plan: <b>8</b>" in rows["num_samples"].hint.value and "set by you" in rows["num_samples"].hint.value


def test_a_panel_over_a_finished_session_shows_its_results(finished):
    panel, _, _ = finished
    again = panel.session.panel(run_mode="thread")
    assert again.session is panel.session
    assert again.results_tab.widget.children[0] is again.results_tab.summary
    assert again.results_tab.summary.value == panel.results_tab.summary.value


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_in_thread_mode_leaves_no_output_and_the_session_runs_again(tiny_llama, calibration_texts, tmp_path):
    out = tmp_path / "out"
    panel = _panel(tiny_llama, out, calibration_texts)
    at_grid, clicked = threading.Event(), threading.Event()

    def hold_first_grid_point(change):  # runs in the run's thread when the grid bar moves
        if change["new"] > 0 and not at_grid.is_set():
            at_grid.set()
            clicked.wait(60)

    panel.progress.grid.observe(hold_first_grid_point, "value")
    panel.run_button.click()
    assert at_grid.wait(120), panel.message.value
    assert panel.session.state == "running" and panel.run_button.disabled and not panel.cancel_button.disabled
    assert all(row.control.disabled for row in panel.form.rows.values())  # no settings change mid-run
    panel.cancel_button.click()  # from this thread, as a click arrives while the run's thread works
    pressed = time.monotonic()
    clicked.set()
    assert panel.runner.wait(120)
    assert time.monotonic() - pressed < 10  # stopped at the next grid point, not at the end
    panel.progress.grid.unobserve(hold_first_grid_point, "value")

    assert panel.session.state == "cancelled"
    assert panel.runner.outcome.state == "cancelled"
    assert "cancelled" in panel.message.value and "no output was written" in panel.message.value
    assert not out.exists() and _leftovers(tmp_path) == []
    assert panel.progress.layers.bar_style == "warning"
    assert not panel.run_button.disabled and panel.cancel_button.disabled
    assert not any(row.control.disabled for name, row in panel.form.rows.items() if name not in ("num_samples", "seq_len", "batch_size"))

    panel.run_button.click()
    assert panel.runner.wait(300)
    assert panel.session.state == "done" and (out / "model.safetensors").is_file()
    assert panel.progress.layers.value == panel.progress.layers.max


@pytest.fixture
def one_torch_thread():
    """AWQ in the main thread with OpenMP's two spinning threads slows down tenfold when other
    processes share this machine's two cores (a foreground run is in the main thread; a thread-mode
    run is not affected). One intra-op thread keeps the foreground tests quick; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ClickingPoller:
    """A stand-in for the kernel: at the first poll inside the grid search, the user's Cancel click arrives."""

    def __init__(self, panel_ref: list):
        self.panel_ref = panel_ref
        self.polls = 0
        self.clicked_at: int | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def poll(self, max_messages: int = 10) -> int:
        self.polls += 1
        panel = self.panel_ref[0]
        if self.clicked_at is None and panel.listener.state.point > 0:
            self.clicked_at = panel.listener.events
            panel.cancel_button.click()
            return 1
        return 0


def test_foreground_run_polls_between_grid_points_and_cancel_gets_through(tiny_llama, calibration_texts, tmp_path,
                                                                         one_torch_thread):
    out = tmp_path / "out"
    ref: list = []
    pollers: list[ClickingPoller] = []

    def factory():
        pollers.append(ClickingPoller(ref))
        return pollers[-1]

    panel = _panel(tiny_llama, out, calibration_texts, run_mode="foreground", poller_factory=factory)
    ref.append(panel)
    assert panel.runner.mode == "foreground"
    panel.run_button.click()  # returns when the run has ended: it ran in this thread
    assert not panel.runner.running
    poller = pollers[0]
    assert poller.clicked_at is not None and poller.polls >= 1
    assert panel.listener.events <= poller.clicked_at + 3  # stopped at the next grid point
    assert panel.session.state == "cancelled" and "cancelled" in panel.message.value
    assert not out.exists() and _leftovers(tmp_path) == []

    # Without a kernel the real poller is inactive, and a foreground run simply runs to the end.
    panel.runner.poller_factory = KernelPoller
    panel.run_button.click()
    assert panel.session.state == "done"
    assert panel.runner.poller.active is False and panel.runner.poller.reason == "no Jupyter kernel"
    assert panel.progress.layers.value == panel.progress.layers.max
    assert panel.results_tab.widget.children[0] is panel.results_tab.summary


# -- errors during a run ----------------------------------------------------------------------------


def test_errors_during_a_run_show_in_the_panel(tiny_llama, calibration_texts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    panel = _panel(tiny_llama, out, calibration_texts)
    assert not panel.run_button.disabled
    out.mkdir()
    (out / "someone-elses.txt").write_text("x")  # filled after the form was checked
    panel.run()
    panel.runner.wait(60)
    assert "is not empty" in _message(panel, "output")  # caught by the check that Run makes first
    assert panel.session.state != "running" and "Fix the settings" in panel.message.value
    (out / "someone-elses.txt").unlink()
    panel.validate(force=True)

    def broken_run(*args, **kwargs):
        raise RuntimeError("something broke\ninside the engine")

    monkeypatch.setattr(panel.session, "run", broken_run)
    panel.run_button.click()
    assert panel.runner.wait(60)
    assert panel.runner.outcome.state == "failed"
    assert "RuntimeError: something broke inside the engine" in panel.message.value
    assert "Traceback" in panel.runner.outcome.traceback  # kept for a bug report, not shown
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert not panel.run_button.disabled and panel.progress.layers.bar_style == "danger"


# -- validation -------------------------------------------------------------------------------------


def test_invalid_fields_show_the_engines_message_and_disable_run(tiny_llama, calibration_texts, tmp_path):
    panel = _panel(tiny_llama, tmp_path / "out", calibration_texts)
    assert panel.valid and not panel.run_button.disabled

    _type(panel, "num_samples", "many")
    assert _message(panel, "num_samples") == "'num_samples' must be a whole number or 'auto', not 'many'."
    assert "must be a whole number" in panel.form.rows["num_samples"].message.value
    assert panel.form.rows["num_samples"].message.layout.display is None  # shown
    assert panel.run_button.disabled
    _type(panel, "seq_len", "4")
    assert _message(panel, "seq_len") == "'seq_len' must be at least 8, got 4."
    assert _message(panel, "num_samples")  # two wrong fields, two messages
    _type(panel, "num_samples", "6")
    _type(panel, "seq_len", "32")
    assert panel.form.errors() == {} and not panel.run_button.disabled
    assert panel.session.settings.num_samples == 6 and panel.session.settings.seq_len == 32

    _type(panel, "model", str(tmp_path / "no-such-model"))
    assert "does not exist" in _message(panel, "model") and panel.run_button.disabled
    _type(panel, "model", tiny_llama)
    assert not panel.run_button.disabled

    _type(panel, "calibration_dataset", str(tmp_path / "missing.txt"))
    assert "does not exist" in _message(panel, "calibration_dataset") and panel.run_button.disabled
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    _type(panel, "calibration_dataset", str(binary))
    assert "is not UTF-8 text" in _message(panel, "calibration_dataset") and panel.run_button.disabled
    good = tmp_path / "good.txt"
    good.write_text("\n\n".join(calibration_texts), encoding="utf-8")
    _type(panel, "calibration_dataset", str(good))
    assert _message(panel, "calibration_dataset") == "" and not panel.run_button.disabled

    _type(panel, "ignore", "lm_head, re:(")
    assert "is not a valid regular expression" in _message(panel, "ignore")
    assert panel.form.advanced.selected_index == 0  # the section opens to show it
    _type(panel, "ignore", "")
    _type(panel, "output", "")
    assert "No output folder given" in _message(panel, "output") and panel.run_button.disabled
    assert "\n" not in _message(panel, "output")


def test_session_check_finds_local_problems_without_the_network(tiny_llama, calibration_texts, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    bad = Session(model=str(tmp_path / "nowhere"), output=str(full), calibration_dataset=str(tmp_path / "none.txt"))
    problems = bad.check()
    assert set(problems) == {"model", "calibration_dataset", "output"}
    assert "does not exist" in problems["model"] and "not empty" in problems["output"]
    hub = Session(model="someorg/somemodel", output=str(tmp_path / "out"))  # hub ids wait for the plan
    assert hub.check() == {}
    assert Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts).check() == {}


def test_a_fresh_panel_asks_for_a_model_then_makes_its_session(tiny_llama, calibration_texts, tmp_path):
    panel = qwodel_nb.panel(run_mode="thread")
    assert panel.session is None and panel.run_button.disabled
    assert "No model given" in _message(panel, "model")
    assert panel.vram_tab.refresh.disabled
    _type(panel, "model", tiny_llama)
    assert isinstance(panel.session, Session) and panel.session.settings.model == tiny_llama
    assert "No output folder" in _message(panel, "output") and panel.run_button.disabled
    _type(panel, "output", str(tmp_path / "out"))
    assert panel.session.settings.output == str(tmp_path / "out")
    assert _message(panel, "calibration_dataset") == ""  # the default hub dataset is checked by the plan, not here
    assert not panel.run_button.disabled and not panel.vram_tab.refresh.disabled


def test_a_session_s_advanced_settings_show_and_stay_as_they_are(tiny_llama, calibration_texts, tmp_path):
    session = Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts,
                      ignore=["lm_head", "re:.*mlp\\.gate$"], group_size=64, symmetric=True, dtype="float32",
                      calibration_split="validation")
    before = session.settings
    panel = qwodel_nb.panel(session, run_mode="thread", seed=3)  # seed: an option the form has no field for
    assert panel.form.rows["ignore"].control.value == "lm_head, re:.*mlp\\.gate$"
    assert panel.form.rows["group_size"].control.value == "64" and panel.form.rows["symmetric"].control.value
    assert panel.form.advanced.selected_index == 0
    assert session.settings == before.replace(seed=3) and session.settings.dtype == "float32"
    assert panel.valid
    _type(panel, "calibration_split", "")  # emptied: the default split again
    assert session.settings.calibration_split == "train"
    _type(panel, "ignore", "")
    assert session.settings.ignore is None


def test_unknown_options_and_run_modes_fail_clearly():
    with pytest.raises(SettingsError, match="Did you mean 'output'"):
        qwodel_nb.panel(ouptut="./x")
    with pytest.raises(SettingsError, match="run_mode must be one of"):
        qwodel_nb.panel(run_mode="fast")


# -- auto toggles, VRAM, plan and preview ------------------------------------------------------------


def test_auto_toggles_show_what_the_table_picks(tiny_llama, calibration_texts, tmp_path):
    session = Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts)
    panel = qwodel_nb.panel(session, run_mode="thread")
    rows = panel.form.rows
    for name, value in (("num_samples", 32), ("seq_len", 512), ("batch_size", 1)):  # no GPU here: the CPU row
        row = rows[name]
        assert row.auto.value and row.control.disabled and row.control.value == str(value)
        assert f"auto: <b>{value}</b>" in row.hint.value and "no GPU: CPU row" in row.hint.value
    assert session.settings.num_samples is None

    rows["num_samples"].auto.value = False  # untick: the table's value is the starting point
    assert not rows["num_samples"].control.disabled and rows["num_samples"].control.value == "32"
    assert session.settings.num_samples == 32
    _type(panel, "num_samples", "12")
    assert session.settings.num_samples == 12
    rows["num_samples"].auto.value = True
    assert session.settings.num_samples is None and rows["num_samples"].control.value == "32"

    panel.tabs.selected_index = 2
    panel.plan_tab.refresh.click()
    assert "<b>Plan</b>" in panel.plan_tab.view.value and panel.plan_tab.message.value == ""
    # the plan caps the table's values by what the model and data allow, and says so beside the field
    planned = session.last_plan.calibration
    assert rows["seq_len"].control.value == str(planned.seq_len.value)
    assert f"plan: <b>{planned.num_samples.value}</b>" in rows["num_samples"].hint.value


def test_vram_tab_no_gpu_state_and_refresh(tiny_llama, calibration_texts, tmp_path):
    panel = _panel(tiny_llama, tmp_path / "out", calibration_texts)
    shown = panel.vram_tab.view.value
    assert "No GPU" in shown and "CPU row" in shown
    assert "No GPU: CPU settings" in panel.vram_tab.row.value and "seq_len 512" in panel.vram_tab.row.value
    panel.vram_tab.view.value = ""
    panel.vram_tab.refresh.click()
    assert "No GPU" in panel.vram_tab.view.value


def test_vram_tab_shows_a_bar_per_gpu_with_free_memory_and_headroom():
    gib = 1024**3
    report = VramReport(gpus=(GpuInfo(0, 0, "Simulated L4", 24 * gib, 2 * gib, 22 * gib),
                              GpuInfo(1, 1, "Simulated L4", 24 * gib, 20 * gib, 4 * gib)))
    placement = Placement("cuda", "bfloat16", "bfloat16", 21 * gib, "GPU 0 (Simulated L4) has 22.0 GB free",
                          "whole model on GPU 0")
    from qwodel_nb.widgets.tabs import VramTab

    tab = VramTab()
    tab.show_vram(VramView(report, placement))
    html = tab.view.value
    assert html.count("class='bar'") == 2 and "22.00 GiB" in html and "4.00 GiB" in html
    assert "Headroom for this model: <b>21.00 GiB</b>" in html
    assert "Settings table" in tab.row.value and "16-24 GB" in tab.row.value and "batch_size 8" in tab.row.value


def test_preview_tab_shows_samples_and_summary(tiny_llama, calibration_texts, tmp_path):
    panel = _panel(tiny_llama, tmp_path / "out", calibration_texts)
    panel.preview_tab.rows.value = 3
    panel.preview_tab.refresh.click()
    shown = panel.preview_tab.view.value
    assert "<b>Calibration</b>" in shown and "8 samples from in-memory list" in shown
    assert shown.count("<pre>") == 3
    panel.preview_tab.rows.value = 1
    panel.preview_tab.refresh.click()
    assert panel.preview_tab.view.value.count("<pre>") == 1
    assert panel.session.state == "planned"


def test_preview_errors_stay_in_the_tab(tiny_llama, tmp_path):
    panel = qwodel_nb.panel(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset="nosuchorg/nosuchdata",
                            run_mode="thread")
    panel.preview_tab.refresh.click()
    assert "nosuchorg/nosuchdata" in panel.preview_tab.message.value
    assert "Traceback" not in panel.preview_tab.message.value


# -- the token ---------------------------------------------------------------------------------------


def test_a_token_is_kept_hidden(tiny_llama, calibration_texts, tmp_path):
    from ipywidgets.embed import embed_data

    panel = _panel(tiny_llama, tmp_path / "out", calibration_texts)
    token_row = panel.form.rows["token"]
    assert isinstance(token_row.control, ipywidgets.Password)
    token_row.control.value = TOKEN
    assert token_row.control.value == ""  # moved out of the widget at once
    assert panel.session.settings.token.reveal() == TOKEN
    assert "token set (panel), hidden" in token_row.note.value
    state = json.dumps(embed_data(views=[panel.widget])["manager_state"])  # what a saved notebook keeps
    for text in (repr(panel), str(panel.session), panel.session.status(), state):
        assert TOKEN not in text
    _type(panel, "seq_len", TOKEN)  # pasted into the wrong field: the message does not quote it
    assert "***" in _message(panel, "seq_len") and TOKEN not in _message(panel, "seq_len")
    panel.form.rows["seq_len"].auto.value = True
    token_row.clear.click()
    assert panel.session.settings.token is None and token_row.note.value == ""


# -- run modes and the poller ------------------------------------------------------------------------


def test_run_mode_auto_is_foreground_on_colab_only(monkeypatch):
    assert not in_colab()
    assert resolve_run_mode("auto") == "thread"
    assert resolve_run_mode("Foreground") == "foreground" and resolve_run_mode("thread") == "thread"
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert in_colab() and resolve_run_mode("auto") == "foreground"
    assert qwodel_nb.panel().runner.mode == "foreground"


def test_poller_without_a_kernel_does_nothing():
    with KernelPoller() as poller:
        assert not poller.active and poller.reason == "no Jupyter kernel"
        assert poller.poll() == 0


class FakeKernel:
    """The parts of an ipykernel 6 kernel the poller uses, with a queue of shell messages."""

    def __init__(self):
        self.shell_handlers = {"execute_request": self.execute_request, "comm_msg": self.comm_msg}
        self.queue: list[tuple[str, dict]] = []
        self.parent = ("cell-ident", {"msg_id": "run-cell"})
        self.log: list[str] = []
        self.callbacks: list = []
        self.io_loop = types.SimpleNamespace(add_callback=self.callbacks.append)
        self.statuses: list[str] = []

    @property
    def msg_queue(self):
        return types.SimpleNamespace(qsize=lambda: len(self.queue))

    async def do_one_iteration(self):
        assert threading.current_thread() is not threading.main_thread()  # off the blocked main thread
        if self.queue:
            kind, msg = self.queue.pop(0)
            self.set_parent("ident-" + msg["msg_id"], msg)
            result = self.shell_handlers[kind]("stream", "ident-" + msg["msg_id"], msg)
            if hasattr(result, "__await__"):
                await result

    async def execute_request(self, stream, ident, parent):
        self.log.append("executed " + parent["msg_id"])

    def comm_msg(self, stream, ident, parent):
        self.log.append("comm " + parent["msg_id"])

    def set_parent(self, ident, parent, channel="shell"):
        self.parent = (ident, parent)

    def get_parent(self, channel="shell"):
        return self.parent[1]

    @property
    def _parent_ident(self):
        return {"shell": self.parent[0]}

    def _publish_status(self, status, channel="shell"):
        self.statuses.append(status)


def test_poller_handles_widget_messages_and_holds_cells_until_the_run_ends():
    import asyncio

    kernel = FakeKernel()
    original = kernel.shell_handlers["execute_request"]
    with KernelPoller(kernel) as poller:
        assert poller.active
        kernel.queue += [("comm_msg", {"msg_id": "click-1"}), ("execute_request", {"msg_id": "cell-2"}),
                         ("comm_msg", {"msg_id": "click-3"})]
        assert poller.poll() == 3
        assert kernel.log == ["comm click-1", "comm click-3"]  # the cell waits
        assert kernel.parent == ("cell-ident", {"msg_id": "run-cell"})  # output stays with the run
        assert poller.poll() == 1  # an empty queue: one look, no spinning
    assert kernel.shell_handlers["execute_request"] == original
    assert len(kernel.callbacks) == 1  # the held cell is handed back after the run
    asyncio.run(kernel.callbacks[0]())
    assert kernel.log[-1] == "executed cell-2" and kernel.statuses == ["idle"]


def test_a_stuck_kernel_turns_polling_off_without_stopping_the_run(monkeypatch):
    import qwodel_nb.widgets.ui_poll as ui_poll

    class StuckKernel(FakeKernel):
        async def do_one_iteration(self):
            await asyncio.sleep(30)

    import asyncio

    monkeypatch.setattr(ui_poll, "POLL_TIMEOUT_S", 0.2)
    kernel = StuckKernel()
    with KernelPoller(kernel) as poller:
        assert poller.poll() == 0
        assert not poller.active and "stopped handing over messages" in poller.reason
        assert poller.poll() == 0


def test_throttle_lets_through_ten_a_second():
    now = [0.0]
    throttle = Throttle(0.1, clock=lambda: now[0])
    passed = 0
    for _ in range(1000):  # one event every millisecond for a second
        passed += throttle.ready()
        now[0] += 0.001
    assert 9 <= passed <= 11


# -- entry points and display ----------------------------------------------------------------------------


def test_entry_points_and_display(tiny_llama, calibration_texts, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.instance(config=config)  # display() needs a shell; the one test_magics uses if it exists

    session = Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts, **RUN)
    from_session = session.panel(run_mode="thread")
    from_function = qwodel_nb.panel(session, run_mode="thread")
    assert from_session.session is session and from_function.session is session
    assert [from_session.tabs.get_title(i) for i in range(5)] == ["Settings", "VRAM", "Plan", "Preview", "Results"]
    with capture_output() as cap:
        from IPython.display import display

        display(from_session)
    bundle = cap.outputs[0].data
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == from_session.widget.model_id


# -- Colab's path in a real kernel -----------------------------------------------------------------------


class KernelFrontend:
    """A real ipykernel driven the way a notebook page drives it: cells, widget state, button clicks."""

    def __init__(self, tmp_path):
        from jupyter_client import KernelManager

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                   JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), OMP_NUM_THREADS="1")
        self.manager = KernelManager(kernel_cmd=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)
        self.widgets: dict[str, dict] = {}
        self.messages: list[dict] = []

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def _drain(self, timeout: float) -> list[dict]:
        batch = []
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=timeout)
            except Exception:  # queue.Empty: nothing more for now
                break
            batch.append(msg)
            content = msg["content"]
            if msg["msg_type"] == "comm_open":
                self.widgets[content["comm_id"]] = dict(content["data"].get("state", {}))
            elif msg["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
                self.widgets.setdefault(content["comm_id"], {}).update(content["data"]["state"])
        self.messages += batch
        return batch

    def wait(self, condition, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < end, "the kernel did not get there in time"
            self._drain(0.05)

    def idle(self, msg_id: str) -> bool:
        return any(m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                   and m["content"]["execution_state"] == "idle" for m in self.messages)

    def execute(self, code: str, wait: bool = True) -> str:
        msg_id = self.client.execute(code)
        if wait:
            self.wait(lambda: self.idle(msg_id))
        return msg_id

    def output(self, msg_id: str) -> str:
        return "".join(m["content"].get("text", "") + "".join(m["content"].get("traceback", []))
                       for m in self.messages if m["parent_header"].get("msg_id") == msg_id
                       and m["msg_type"] in ("stream", "error"))

    def find(self, model: str, description: str | None = None) -> str:
        return next(cid for cid, state in self.widgets.items() if state.get("_model_name") == model
                    and (description is None or state.get("description") == description))

    def click(self, comm_id: str) -> str:
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id,
                                                   "data": {"method": "custom", "content": {"event": "click"}}})
        self.client.session.send(self.client.shell_channel.socket, msg)
        return msg["header"]["msg_id"]


def test_foreground_run_in_a_real_kernel(tiny_llama, tmp_path):
    """Colab's mode end to end in a real ipykernel: the Run click's handler runs AWQ and the grid bar
    moves in the page meanwhile. Under ipykernel 5/6 (Colab's) a Cancel click gets through within the
    run and a cell started meanwhile runs after it; ipykernel 7 cannot hand over queued messages, so
    there the run goes to its end and the click and the cell are handled after it."""
    pytest.importorskip("jupyter_client")
    ipykernel = pytest.importorskip("ipykernel")
    polls = int(ipykernel.__version__.split(".")[0]) < 7
    out = tmp_path / "out"
    kernel = KernelFrontend(tmp_path)
    try:
        kernel.execute(
            "from qwodel_nb import Session, panel\nfrom qwodel_nb.engine.demo import generate_text\n"
            # the tiny run takes well under a second after its first grid point, less than a Cancel
            # click's way to the kernel and its next poll: each mapping's search waits a quarter second
            "import time\nfrom qwodel_nb.engine import awq_capture\n_search = awq_capture.search_best_scales\n"
            "awq_capture.search_best_scales = lambda *a, **k: (time.sleep(0.25), _search(*a, **k))[1]\n"
            f"s = Session(model={tiny_llama!r}, output={str(out)!r}, calibration_dataset=generate_text(48, seed=11), "
            "num_samples=8, seq_len=48, batch_size=2)\n"
            "p = panel(s, run_mode='foreground')\ndisplay(p)\n")
        run, cancel = kernel.find("ButtonModel", "Run AWQ"), kernel.find("ButtonModel", "Cancel")
        grid = kernel.find("IntProgressModel")
        run_click = kernel.click(run)
        kernel.wait(lambda: kernel.widgets[grid].get("value", 0) > 0)  # live progress while the handler runs
        assert kernel.widgets[cancel]["disabled"] is False
        cell = kernel.execute("print('cell ran; state =', s.state)", wait=False)
        kernel.click(cancel)
        kernel.wait(lambda: kernel.idle(run_click) and kernel.idle(cell), timeout=120)
        check = kernel.execute(f"import os; print(s.state, os.path.exists({str(out)!r}), p.runner.poller.active)")
        if not polls:
            assert kernel.output(cell) == "cell ran; state = done\n"
            assert kernel.output(check) == "done True False\n"
            assert kernel.widgets[grid]["value"] == kernel.widgets[grid]["max"] == 20
            return
        assert kernel.output(cell) == "cell ran; state = cancelled\n"  # held back until the run ended
        assert kernel.output(check) == "cancelled False True\n"

        run_again = kernel.click(run)  # the session runs again, to the end
        kernel.wait(lambda: kernel.idle(run_again))
        assert kernel.widgets[grid]["value"] == kernel.widgets[grid]["max"] == 20
        check = kernel.execute("print(s.state, len(p.results_tab.plot.value) > 0)")
        assert kernel.output(check) == "done True\n"
    finally:
        kernel.close()


def test_a_bug_while_checking_is_one_line_not_a_traceback(tiny_llama, calibration_texts, tmp_path, monkeypatch, capsys):
    panel = _panel(tiny_llama, tmp_path / "out", calibration_texts)

    def broken_check(**kwargs):
        raise KeyError("weird config")

    monkeypatch.setattr(panel.session, "check", broken_check)
    _type(panel, "num_samples", "5")
    assert panel.run_button.disabled and "could not be checked" in _message(panel, "model")
    assert "KeyError: 'weird config'" in html.unescape(panel.message.value)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    monkeypatch.undo()
    _type(panel, "num_samples", "6")
    assert not panel.run_button.disabled and panel.message.value == ""
