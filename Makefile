# Moorage: `make up` (demo) and `make test` are the two set-up commands on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
MOORAGE := $(VENV)/bin/moorage
PYTHON ?= python3
# llama-cpp-python is built from source; the LLaVA part is not needed (and slow to build).
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: venv system-deps up down demo test test-fast test-e2e lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[llamacpp,dev]'
	touch $@

venv: $(VENV)/.installed

## system packages the tests and the local runtime use (bubblewrap, etcd); apt-get when missing
system-deps:
	bash .ci/install-system-deps

## start Moorage in the background (embedded mode), deploy SmolLM2 and print URL, token and a streaming curl
up: venv system-deps
	$(MOORAGE) up --detach
	$(MOORAGE) demo

down:
	$(MOORAGE) down

## unit tests only (seconds)
test-fast: venv
	$(VENV)/bin/pytest -q -m "not e2e"

## the full suite: unit, integration and end-to-end (PostgreSQL, etcd, real processes, the real SmolLM2)
test: venv system-deps
	$(VENV)/bin/pytest -q

test-e2e: venv system-deps
	$(VENV)/bin/pytest -q -m e2e

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
