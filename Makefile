# Set-up and the two everyday commands. `make demo` and `make test` each create the virtual
# environment on first use: a CPU build of torch 2.13.0 first (inside llm-compressor 0.14's pins,
# so pip keeps it), then this package with its test extra.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qwodel-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qwodel demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) qwodel-demo
