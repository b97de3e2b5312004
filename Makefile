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

.PHONY: install proto lint format test soak run demo-model clean bench-tracing

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

# Minutes of load against CPU workers while a worker is killed and restarted (the suite runs a short version).
SOAK_SECONDS ?= 180
SOAK_STREAMS ?= 64
soak: $(STAMP)
	@mkdir -p bench-results
	$(PY) -m tests.load.soak --duration $(SOAK_SECONDS) --streams $(SOAK_STREAMS) --json bench-results/soak.json

# Serves MODEL (a checkpoint directory or a hub id in the local cache); without one, the random-weight demo
# checkpoint, built once into $(DEMO_MODEL)/.
run: $(STAMP)
	@if [ -z "$(MODEL)" ]; then $(VENV)/bin/autoglm-rpc demo-model --output $(DEMO_MODEL) --if-missing; fi
	$(VENV)/bin/autoglm-rpc serve --host $(HOST) --port $(PORT) \
		$(if $(MODEL),--model "$(MODEL)",--model $(DEMO_MODEL) --model-id autoglm-demo)

# A/B: throughput and TTFT with tracing off vs 10 % request sampling exported to an in-process OTLP sink.
# `make bench` / `make bench-gpu` call this too; BENCH_TRACING_ARGS passes options (e.g. --device cuda --model DIR).
BENCH_TRACING_ARGS ?=
bench-tracing: $(STAMP)
	$(PY) bench/tracing_overhead.py $(BENCH_TRACING_ARGS)

demo-model: $(STAMP)
	$(VENV)/bin/autoglm-rpc demo-model --output $(DEMO_MODEL)

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .pytest_cache .ruff_cache *.egg-info
