"""Re-execute the tutorial notebooks in place, so that their stored outputs are current.

    python notebooks/execute.py                        # every notebooks/NN_*.ipynb, in order
    python notebooks/execute.py notebooks/01_quickstart.ipynb
    make notebooks                                     # the same, with the project's venv

Run it after a change that alters what the notebooks show (a new plan line, a new setting): nbval
compares the stored outputs with fresh ones, so stale outputs fail `make test`. Each notebook runs
top to bottom in a fresh kernel of this Python, from the notebooks folder (as JupyterLab and nbval
run it), importing this checkout of qwodel_nb, offline, on one CPU thread (as CI runs it, so that
the numbers in the stored outputs are the ones CI sees). Widget state is not stored: the outputs
keep each widget's text form, and the notebooks stay small.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The environment every notebook kernel gets (here, in nbval runs and in the binder check).
KERNEL_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def notebooks() -> list[str]:
    names = sorted(n for n in os.listdir(HERE) if n.endswith(".ipynb") and n[:2].isdigit() and n[2] == "_")
    return [os.path.join(HERE, n) for n in names]


def kernel_environment(import_checkout: bool = True) -> dict[str, str]:
    """This process's environment with :data:`KERNEL_ENV`; this Python first on PATH (the python3
    kernelspec starts ``python``), and this checkout first on PYTHONPATH when ``import_checkout``."""
    env = dict(os.environ)
    env.update(KERNEL_ENV)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if import_checkout:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def execute(path: str, timeout: int = 1800) -> float:
    """Run ``path`` top to bottom and write it back with its new outputs; returns the seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(path)}},
        record_timing=False,
        store_widget_state=False,
    )
    started = time.monotonic()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(kernel_environment())  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="notebooks to execute (default: all tutorials, in order)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed for one cell")
    args = parser.parse_args(argv)
    paths = args.paths or notebooks()
    for path in paths:
        try:
            seconds = execute(os.path.abspath(path), args.timeout)
        except Exception as exc:  # noqa: BLE001 - one line per failing notebook, then stop
            where = os.path.relpath(path, ROOT)
            if hasattr(exc, "ename"):  # nbclient's CellExecutionError: the cell's own error
                cell = next((line for line in str(exc).splitlines() if line.strip() and "---" not in line
                             and "An error occurred" not in line), "")
                print(f"{where}: failed in the cell starting {cell.strip()[:60]!r}: {exc.ename}: {exc.evalue}",
                      file=sys.stderr)
            else:
                print(f"{where}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"{os.path.relpath(path, ROOT)}: executed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
