# Moorage: `make up` (demo) and `make test` are the two set-up commands on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
MOORAGE := $(VENV)/bin/moorage
PYTHON ?= python3
# llama-cpp-python is built from source, once per version and flags, into a wheel cache outside the checkout.
# Portable CPU flags, not -march=native: a native build on a CPU that reports AMX crashed in ggml's AMX kernels
# (SIGSEGV in ggml_backend_amx_mul_mat on the first decode). The LLaVA part is not needed (and slow to build).
LLAMA_VERSION ?= 0.3.36
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELHOUSE ?= $(HOME)/.cache/moorage/wheels/$(shell echo '$(LLAMA_VERSION) $(CMAKE_ARGS)' | sha256sum | cut -c1-16)

.PHONY: venv system-deps up down demo test test-fast test-e2e lint clean console-vendor

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		$(VENV)/bin/pip wheel -q --no-cache-dir --no-deps 'llama-cpp-python==$(LLAMA_VERSION)' -w $(WHEELHOUSE)
	$(VENV)/bin/pip install -q --find-links $(WHEELHOUSE) -e '.[llamacpp,dev]' 'llama-cpp-python==$(LLAMA_VERSION)'
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

## everything but the e2e-marked tests (a few minutes); they use a real etcd and PostgreSQL, bubblewrap and pasta,
## so system-deps installs what is missing and starts PostgreSQL first
test-fast: venv system-deps
	$(VENV)/bin/pytest -q -m "not e2e"

## the full suite: unit, integration and end-to-end (PostgreSQL, etcd, real processes, the real SmolLM2)
test: venv system-deps
	$(VENV)/bin/pytest -q

test-e2e: venv system-deps
	$(VENV)/bin/pytest -q -m e2e

## ruff, then mypy (configured in pyproject.toml: strict by default, the modules not strict yet listed; cache in .mypy_cache)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## refresh the console's vendored browser libraries (Preact, htm) from the npm registry; needs npm, only here
console-vendor:
	bash .ci/console-vendor

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
