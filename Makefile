# Set-up and the two everyday commands. `make demo` and `make test` each create the virtual
# environment on first use: a CPU build of torch 2.13.0 first (inside llm-compressor 0.14's pins,
# so pip keeps it), then this package with its test extra.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qwodel-installed
TORCH  ?= torch==2.13.0

# The widget panel must work with ipywidgets 7.7.1 (Colab) as well as 8.x (the venv's). Its tests run
# a second time against 7.7.1 installed into $(IW7) and put first on PYTHONPATH, together with what
# 7.7.1 needs that the venv lacks or has in another major version: Colab's ipykernel 6 (ipywidgets 7
# imports its Comm; it also lets a test drive a real kernel as Colab's page does) and its client
# libraries. --no-deps keeps everything else (IPython, traitlets, torch...) the venv's own.
IW7       ?= .iw7
IW7_STAMP := $(IW7)/.qwodel-installed
IW7_PKGS  := ipywidgets==7.7.1 widgetsnbextension==3.6.10 jupyterlab_widgets==1.1.11 ipython_genutils==0.2.0 \
             ipykernel==6.17.1 jupyter_client==7.4.9 jupyter_core==5.9.1 tornado==6.6.1 pyzmq==27.3.0 \
             nest_asyncio==1.6.0 entrypoints==0.4.2 platformdirs==4.14.8

# The tutorial notebooks under nbval: outputs compared after notebooks/nbval_sanitize.cfg's substitutions,
# each kernel offline on one thread (notebooks/conftest.py). `make notebooks` refreshes their stored outputs.
NBVAL := -p no:cacheprovider --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: demo test test-widgets7 test-notebooks test-browser test-binder notebooks install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qwodel demo

# Triton for the tests: its CPU interpreter runs the fused AWQ candidate kernel
# (qwodel_nb/engine/fused_candidates.py) against the PyTorch path in tests/test_fused_candidates.py.
# A CUDA build of torch brings its own Triton, which is kept.
TRITON       ?= triton==3.6.0
TRITON_STAMP := $(VENV)/.qwodel-triton

$(TRITON_STAMP): $(STAMP)
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TRITON)"
	touch $@

$(IW7_STAMP): $(STAMP)
	rm -rf $(IW7)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(IW7) $(IW7_PKGS)
	touch $@

# Every test under the venv's ipywidgets 8, then the panel's tests under ipywidgets 7.7.1, the
# notebooks under nbval, the panel in JupyterLab in headless Chromium, and the binder environment.
test: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -m "not browser and not binder"
	$(MAKE) --no-print-directory test-widgets7
	$(MAKE) --no-print-directory test-notebooks
	$(MAKE) --no-print-directory test-browser
	$(MAKE) --no-print-directory test-binder

test-notebooks: $(STAMP)
	$(BIN)/python -m pytest $(NBVAL) notebooks/

test-browser: $(STAMP)
	$(BIN)/python -m pytest -m browser tests/browser

test-binder: $(STAMP)
	$(BIN)/python -m pytest -m binder tests/binder

notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

test-widgets7: $(IW7_STAMP)
	PYTHONPATH=$(abspath $(IW7)) QWODEL_EXPECT_IPYWIDGETS=7.7.1 $(BIN)/python -m pytest tests/test_panel.py

clean:
	rm -rf $(VENV) $(IW7) qwodel-demo notebooks/work build/browser
