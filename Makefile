# QueueChat: `make run` serves the default model, `make test` runs every test.
# Both create the virtual environment and fetch the model file themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; set TORCH_SPEC=torch (or a CUDA build) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
MODEL_FILE := models/SmolLM2-135M-Instruct.Q4_1.gguf
EMBEDDING_MODEL := models/all-MiniLM-L6-v2

# The engine of the default model: empty for the models file's choice (transformers), or llama-cpp.
ENGINE ?=

.PHONY: run test venv model browser llama-cpp llama-cpp-if-possible unit integration bench soak gpu-check clean

run: venv model $(if $(filter llama-cpp,$(ENGINE)),llama-cpp)
	$(if $(ENGINE),QUEUECHAT_ENGINE=$(ENGINE)) $(PY) scripts/run_stack.py

test: venv model browser llama-cpp-if-possible
	$(PY) -m pytest -ra

unit: venv
	$(PY) -m pytest -ra tests/unit

integration: venv model browser
	$(PY) -m pytest -ra tests/integration

# Throughput/latency of the full stack against in-process transformers, and of the engines against
# llama.cpp's own server (not a test; see README).
bench: venv model llama-cpp
	$(PY) -m bench
	$(PY) -m bench --echo --max-tokens 256
	$(PY) -m bench --engines

# Mixed traffic for MINUTES, then a leak report (RSS, threads, files, Redis keys); not a test.
MINUTES ?= 10
soak: venv model
	$(PY) -m bench.soak --minutes $(MINUTES)

# On a CUDA machine (make venv TORCH_SPEC=torch first): the batched engine's CUDA path, ~2 minutes.
gpu-check: venv
	$(PY) scripts/gpu_check.py

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

model: $(MODEL_FILE) $(EMBEDDING_MODEL)

# Debian's Chromium, for the chat page test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium \
	  || echo "could not install chromium: the chat page test will be skipped (it fails under CI)"; }

# llama.cpp's server for the llama-cpp engine, built once per machine from the source that
# PyPI's llama-cpp-python carries (~4 minutes on 2 cores; kept in ~/.cache/queuechat/llama.cpp).
llama-cpp: venv
	$(PY) scripts/build_llama_cpp.py

# `make test` builds it too, but goes on without it: the llama-cpp engine's tests are then skipped.
llama-cpp-if-possible: venv
	@$(PY) scripts/build_llama_cpp.py || echo "could not build llama.cpp: the llama-cpp engine tests will be skipped"

$(MODEL_FILE): | venv
	$(PY) scripts/fetch_models.py smollm2

$(EMBEDDING_MODEL): | venv
	$(PY) scripts/fetch_models.py minilm

clean:
	rm -rf $(VENV) .pytest_cache
