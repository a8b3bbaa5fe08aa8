"""Screenshots of the real widget panel after a finished run, rendered by the ipywidgets front end.

    npm pack @jupyter-widgets/html-manager@1.0.15 && tar xzf jupyter-widgets-html-manager-1.0.15.tgz
    apt-get install chromium
    .venv/bin/python docs/make_panel_screenshot.py --embed-js package/dist/embed.js

The panel quantizes the offline demo model (no network; a minute on a CPU) in its thread mode.
Its live widget state is then written out with ``ipywidgets.embed`` and drawn by the widgets'
own HTML manager (the JavaScript that renders the standard controls outside a notebook, from the
npm registry, loaded from a local file since no CDN is reachable here), and headless Chromium
takes the pictures: the Results tab (``docs/panel.png``) and the Settings tab
(``docs/panel_settings.png``). This is the real panel's state drawn by the real controls, but
not inside JupyterLab or Colab, whose page styles differ a little.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=8000"]


def finished_panel(workdir: str):
    from qwodel_nb import Session, panel
    from qwodel_nb.engine.demo import build_model, generate_text

    model = build_model(os.path.join(workdir, "demo-llama"), train_steps=60)
    output = os.path.join(workdir, "demo-llama-awq")
    shutil.rmtree(output, ignore_errors=True)
    session = Session(model=model, output=output, calibration_dataset=generate_text(128, seed=1001),
                      num_samples=16, seq_len=128)
    p = panel(session, run_mode="thread")
    p.preview_tab.refresh.click()
    p.run_button.click()
    if not p.runner.wait(900) or session.state != "done":
        raise SystemExit(f"the run did not finish: {session.status()}")
    return p


def screenshot(p, tab: int, embed_js: str, chromium: str, png: str, height: int) -> None:
    from ipywidgets.embed import embed_minimal_html

    p.tabs.selected_index = tab
    with tempfile.TemporaryDirectory() as tmp:
        page = os.path.join(tmp, "panel.html")
        embed_minimal_html(page, views=[p.widget], title="qwodel panel", requirejs=False, cors=False,
                           embed_url="file://" + os.path.abspath(embed_js))
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size=1040,{height}",
                        f"--screenshot={os.path.abspath(png)}", "file://" + page],
                       check=True, capture_output=True, timeout=120)
    _crop(png)
    print(f"wrote {png}")


def _crop(png: str, margin: int = 12) -> None:
    """Cut the empty page below the panel (the window is taller than any tab)."""
    import numpy as np
    from PIL import Image

    image = Image.open(png).convert("RGB")
    rows = np.where((np.asarray(image) < 250).any(axis=(1, 2)))[0]
    if len(rows):
        image.crop((0, 0, image.width, min(image.height, int(rows[-1]) + margin))).save(png, optimize=True)


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-js", required=True, help="dist/embed.js of @jupyter-widgets/html-manager 1.0.x")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--workdir", default="/tmp/qwodel-panel-demo")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    p = finished_panel(args.workdir)
    screenshot(p, 4, args.embed_js, args.chromium, os.path.join(here, "panel.png"), 3000)
    screenshot(p, 0, args.embed_js, args.chromium, os.path.join(here, "panel_settings.png"), 1200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
