# QueueChat: `make run` serves the default model, `make test` runs every test.
# Both create the virtual environment and fetch the model file themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; set TORCH_SPEC=torch (or a CUDA build) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
MODEL_FILE := models/SmolLM2-135M-Instruct.Q4_1.gguf
EMBEDDING_MODEL := models/all-MiniLM-L6-v2

.PHONY: run test venv model unit integration bench soak clean

run: venv model
	$(PY) scripts/run_stack.py

test: venv model
	$(PY) -m pytest -ra

unit: venv
	$(PY) -m pytest -ra tests/unit

integration: venv model
	$(PY) -m pytest -ra tests/integration

# Throughput/latency of the full stack against in-process transformers (not a test; see README).
bench: venv model
	$(PY) -m bench
	$(PY) -m bench --echo --max-tokens 256

# Mixed traffic for MINUTES, then a leak report (RSS, threads, files, Redis keys); not a test.
MINUTES ?= 10
soak: venv model
	$(PY) -m bench.soak --minutes $(MINUTES)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

model: $(MODEL_FILE) $(EMBEDDING_MODEL)

$(MODEL_FILE): | venv
	$(PY) scripts/fetch_models.py smollm2

$(EMBEDDING_MODEL): | venv
	$(PY) scripts/fetch_models.py minilm

clean:
	rm -rf $(VENV) .pytest_cache
