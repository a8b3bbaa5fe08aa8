"""The engine never imports the notebook layer (IPython, ipywidgets), directly or through the package."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ENGINE = pathlib.Path(__file__).resolve().parents[1] / "qwodel_nb" / "engine"
NOTEBOOK_MODULES = ("IPython", "ipywidgets", "ipykernel", "tqdm.auto", "tqdm.notebook", "qwodel_nb.session",
                    "qwodel_nb.display", "qwodel_nb.magics", "qwodel_nb.panel", "qwodel_nb.widgets",
                    "qwodel_nb.environment")


def test_engine_sources_import_no_notebook_module():
    for path in ENGINE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else []
                if node.level and node.module.split(".")[0] in ("session", "display", "magics", "panel", "plots", "widgets", "environment"):
                    names = [f"qwodel_nb.{node.module}"]
            for name in names:
                assert not name.startswith(NOTEBOOK_MODULES), f"{path.name} imports {name}"


def test_importing_the_package_loads_no_notebook_library():
    code = (
        "import sys, qwodel_nb, qwodel_nb.engine.run, qwodel_nb.engine.awq_capture;"
        "print(sorted(m for m in ('IPython', 'ipywidgets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
