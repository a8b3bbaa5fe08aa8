"""The widget panel in a real browser: JupyterLab on loopback, Debian's Chromium, driven by Playwright.

A JupyterLab server is started in a temporary folder holding a copy of ``notebooks/02_panel.ipynb``;
headless Chromium (the system's, started by Playwright for Python: no browser is downloaded) opens
the notebook, runs every cell from the Run menu, presses the first panel's **Run AWQ** button and
waits for its progress to reach 100% and for its Results tab to show the statistics plot.
Screenshots of each step go to ``build/browser/`` (``QWODEL_BROWSER_ARTIFACTS`` moves them); with
``QWODEL_UPDATE_DOCS=1`` the final one also replaces ``docs/panel_browser.png``.

The test fails when a widget says "Error displaying widget", when the panel never renders, or when
the run does not finish. Without Chromium or Playwright it is skipped, except in CI (``CI`` set),
where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.browser

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "02_panel.ipynb"
CHROMIUM = os.environ.get("QWODEL_CHROMIUM", "/usr/bin/chromium")
# Chromium on a machine without a network, a GPU or a user: no sandbox (root), no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
WIDGET_ERROR = "Error displaying widget"
NOTEBOOK_TIMEOUT_S = 900   # the whole notebook (a demo model build and one quantization on a busy CPU)
RUN_TIMEOUT_S = 600        # one press of Run AWQ


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM}; apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed; pip install -e '.[test]'")
    with sync_playwright() as api:
        yield api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kernel_environment() -> dict[str, str]:
    """What notebooks/execute.py gives its kernels: offline, one thread, this checkout first."""
    spec = importlib.util.spec_from_file_location("notebook_execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel_environment()


@pytest.fixture(scope="module")
def artifacts() -> pathlib.Path:
    folder = pathlib.Path(os.environ.get("QWODEL_BROWSER_ARTIFACTS", ROOT / "build" / "browser"))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    """A JupyterLab server on loopback over a copy of the panel notebook; yields its notebook URL."""
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    if (ROOT / "docs" / "panel_browser.png").exists():  # the notebook shows it; a missing image is noise
        (root / "docs").mkdir()
        shutil.copy(ROOT / "docs" / "panel_browser.png", root / "docs")
    cached = ROOT / "notebooks" / "work" / "demo-llama"
    if (cached / "qwodel-example.json").exists():  # built by an earlier notebook run: skips a minute of training
        shutil.copytree(cached, root / "notebooks" / "work" / "demo-llama")
    env = _kernel_environment()
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(root / ".jupyter" / name.lower())
    # Every cell stays in the page (no windowing), so outputs far down can be read and clicked; and
    # JupyterLab asks nothing about fetching news (no network here).
    settings = pathlib.Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab"
    for plugin, values in (("notebook-extension/tracker", '{"windowingMode": "none"}'),
                           ("apputils-extension/notification", '{"fetchNews": "false"}')):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(values)
    port = _free_port()
    log = open(artifacts / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--ServerApp.root_dir={root}", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode}; see {artifacts / 'jupyterlab.log'}")
            try:
                with urllib.request.urlopen(f"{base}/api/status", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within 120 s; see {artifacts / 'jupyterlab.log'}")
            time.sleep(1)
        yield f"{base}/lab/tree/notebooks/{NOTEBOOK.name}"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


class Page:
    """The notebook page, with a screenshot at each step and the browser's console kept for failures."""

    def __init__(self, page, artifacts: pathlib.Path):
        self.page = page
        self.artifacts = artifacts
        self.shots = 0
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"page error: {error}"))

    def shot(self, name: str) -> pathlib.Path:
        self.shots += 1
        path = self.artifacts / f"{self.shots:02d}_{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def check_widgets(self) -> None:
        errors = self.page.get_by_text(WIDGET_ERROR)
        if errors.count():
            self.shot("widget_error")
            pytest.fail(f"a widget shows {WIDGET_ERROR!r}: {errors.first.inner_text()[:300]}")

    def fail(self, message: str) -> None:
        self.shot("failure")
        (self.artifacts / "console.log").write_text("\n".join(self.console))
        (self.artifacts / "page.html").write_text(self.page.content())
        pytest.fail(f"{message}; screenshots and the browser console are in {self.artifacts}")


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def test_panel_runs_in_jupyterlab(playwright_api, lab, artifacts):
    from playwright.sync_api import Error as PlaywrightError

    browser = playwright_api.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        p = Page(context.new_page(), artifacts)
        page = p.page
        page.goto(lab, wait_until="domcontentloaded", timeout=120_000)
        try:
            page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(timeout=120_000)
            page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for(timeout=120_000)
        except PlaywrightError:
            p.fail("JupyterLab did not open the notebook with an idle kernel")
        p.shot("opened")

        # As a person does it: Edit > Clear Outputs of All Cells (the stored outputs hold the text this
        # test waits for, and widget views without their models), then Run > Run All Cells. A fresh
        # kernel numbers the cells 1..N, so the notebook is done when the last cell shows [N].
        _menu(page, "Edit", "Clear Outputs of All Cells")
        if page.locator(".jp-OutputArea-output").count():
            p.fail("the stored outputs did not clear")
        _menu(page, "Run", "Run All Cells")
        prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")
        last = f"[{prompts.count()}]:"
        deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
        while prompts.last.inner_text().strip() != last:
            p.check_widgets()
            if page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']",
                            has_text="Traceback").count():
                p.fail("a cell raised an exception")
            if time.monotonic() > deadline:
                p.fail(f"the notebook did not finish within {NOTEBOOK_TIMEOUT_S} s")
            page.wait_for_timeout(2000)
        if page.get_by_text("tab shown: Results").count() != 1:
            p.fail("the notebook's last cells did not report the code-driven panel's results")
        p.shot("notebook_ran")

        runs = page.locator("button", has_text="Run AWQ")
        if runs.count() != 2:
            p.fail(f"expected the two panels' Run AWQ buttons, found {runs.count()}")
        panel = page.locator(".jp-OutputArea-output").filter(has=runs.first).first
        p.check_widgets()
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(artifacts / "panel_before_run.png"))

        layers = panel.locator(".widget-hprogress", has_text="layers").locator(".progress-bar").first
        if "progress-bar-success" in (layers.get_attribute("class") or ""):
            p.fail("the first panel's progress shows a finished run before Run AWQ was pressed")
        runs.first.click()
        page.wait_for_timeout(3000)
        panel.screenshot(path=str(artifacts / "panel_running.png"))
        try:  # 100% and the success colour, which only a finished run sets
            page.wait_for_function("bar => bar.style.width === '100%' && bar.classList.contains('progress-bar-success')",
                                   arg=layers.element_handle(), timeout=RUN_TIMEOUT_S * 1000)
        except PlaywrightError:
            p.fail(f"the first panel's progress did not reach 100% within {RUN_TIMEOUT_S} s")

        plot = panel.locator("img.widget-image")
        try:
            plot.first.wait_for(state="visible", timeout=60_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=plot.first.element_handle(),
                                   timeout=60_000)
        except PlaywrightError:
            p.fail("the first panel's Results tab shows no plot")
        selected = panel.locator(".lm-TabBar-tab.lm-mod-current").first.inner_text()
        if selected.strip() != "Results":
            p.fail(f"the panel shows the {selected!r} tab after the run, not Results")
        if panel.get_by_text("Done: the 4-bit model is in").count() != 1:
            p.fail("the panel does not say where the 4-bit model is")
        p.check_widgets()

        # The whole panel, tabs to progress bars: a page tall enough to hold it, no file browser beside it.
        page.keyboard.press("Escape")
        page.keyboard.press("Control+b")
        page.set_viewport_size({"width": 1100, "height": 2600})
        page.wait_for_timeout(1500)
        panel.scroll_into_view_if_needed()
        final = artifacts / "panel_browser.png"
        panel.screenshot(path=str(final))
        p.shot("finished")
        if os.environ.get("QWODEL_UPDATE_DOCS"):
            shutil.copy(final, ROOT / "docs" / "panel_browser.png")
    finally:
        browser.close()
