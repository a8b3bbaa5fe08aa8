"""nbval runs of the tutorial notebooks: every kernel gets the environment execute.py gives its own.

Offline, one CPU thread (the stored outputs were made so, see execute.py), no tokenizer threads.
nbval starts each notebook's kernel with this process's environment, from the notebook's folder.
The kernel imports the installed qwodel_nb (the venv's editable install of this checkout in
`make test`; the package installed from binder/requirements.txt in the binder check).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib


def _kernel_env() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("qwodel_notebooks_execute", pathlib.Path(__file__).with_name("execute.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KERNEL_ENV


def pytest_configure(config):
    for name, value in _kernel_env().items():
        os.environ[name] = value
