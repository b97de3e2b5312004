# autoglm-rpc: `make run` serves, `make test` tests. Both create .venv/ and install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Installed before the project so that pip never replaces it with another build (the range in pyproject.toml
# accepts it). On a GPU machine with a CUDA build of torch already in .venv, this step is skipped.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051
MODEL ?=
DEMO_MODEL := .demo-model
PROTOS := $(wildcard proto/autoglm/v1/*.proto)

.PHONY: install proto lint format test run demo-model clean bench bench-gpu

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Regenerates the Python stubs (messages, services and .pyi) from proto/; tests fail when they are stale.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# Serves MODEL (a checkpoint directory or a hub id in the local cache); without one, the random-weight demo
# checkpoint, built once into $(DEMO_MODEL)/.
run: $(STAMP)
	@if [ -z "$(MODEL)" ]; then $(VENV)/bin/autoglm-rpc demo-model --output $(DEMO_MODEL) --if-missing; fi
	$(VENV)/bin/autoglm-rpc serve --host $(HOST) --port $(PORT) \
		$(if $(MODEL),--model "$(MODEL)",--model $(DEMO_MODEL) --model-id autoglm-demo)

# Benchmarks (not part of `make test`): see README "Performance" and `python -m bench --help`.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
DTYPE ?= bf16
PROMPT_LEN ?= 256
NEW_TOKENS ?= 128
CONCURRENCY ?= 1,16,64,256
OUT ?= bench-results/gpu-$(DTYPE)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

# The demo checkpoint on the CPU at 1/4/16/64 concurrent streams: serial generate(), static batch, the engine in
# process and the whole service; results in bench-results/cpu/. Runs `make bench-tracing` too where it exists.
bench: $(BENCH_STAMP)
	$(PY) -m bench cpu --out bench-results/cpu $(BENCH_ARGS)
	@if $(MAKE) -n bench-tracing >/dev/null 2>&1; then $(MAKE) bench-tracing; fi

# The GLM-4-9B shape on a CUDA GPU, every baseline beside the engine and the service. Installs nothing (a GPU
# machine may be offline); point PY at its Python if it is not $(PY): make bench-gpu PY=python3 DTYPE=nf4
bench-gpu:
	$(PY) -m bench gpu --dtype $(DTYPE) --prompt-len $(PROMPT_LEN) --new-tokens $(NEW_TOKENS) \
		--concurrency $(CONCURRENCY) --out $(OUT) $(BENCH_ARGS)

demo-model: $(STAMP)
	$(VENV)/bin/autoglm-rpc demo-model --output $(DEMO_MODEL)

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .pytest_cache .ruff_cache *.egg-info bench-results
