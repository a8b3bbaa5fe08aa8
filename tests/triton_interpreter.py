"""Runs a check script of tests/ in Triton's CPU interpreter and returns the JSON object it prints.

``TRITON_INTERPRET=1`` must be set before Triton is first imported, hence a subprocess. The script
finds the project and tests/ (its helpers) on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def interpreted(script: str) -> dict:
    """Runs tests/``script`` under ``TRITON_INTERPRET=1``; fails the test with its stderr if it fails."""
    path = os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, os.path.join(HERE, script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
