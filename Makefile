# autoglm-rpc: `make run` serves, `make test` tests. Both create .venv/ and install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Every install takes exactly the versions in the lock (pip constraints), which `make lock` refreshes.
LOCK := requirements.lock
PIP_LOCKED = $(PY) -m pip install -q --no-build-isolation -c $(LOCK)
# Installed before the project so that pip never replaces it with another build (the lock's pin, which a CUDA
# build of the same release satisfies). On a GPU machine with a CUDA build of torch already in .venv, this step
# is skipped.
TORCH_SPEC ?= $(shell grep -m1 '^torch==' $(LOCK))
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051
HTTP_PORT ?= 8000
MODEL ?=
# Names the model answers to as `model` (space-separated; the first is its id), e.g. SERVED_MODEL_NAME=autoglm-phone-9b
SERVED_MODEL_NAME ?=
DEMO_MODEL := .demo-model
PROTOS := $(wildcard proto/autoglm/v1/*.proto)
STUBS := autoglm-proto
# Node.js tools and the Node.js client example come from npm; where npm is missing their tests skip.
NPM := $(shell command -v npm 2>/dev/null)
NPM_CI := npm ci --no-audit --no-fund --loglevel=error
BUF := tools/node_modules/.bin/buf
NODE_STAMPS := tools/node_modules/.installed clients/node/node_modules/.installed
# The Go client example builds offline against Debian's Go packages (see clients/go/README.md).
GO_MODULE := autoglm-rpc-client
GO_GEN := clients/go/autoglmv1
GO_PATH := $(CURDIR)/.gopath:/usr/share/gocode
# The proto names no go_package (a Go import path is each consumer's choice): map every file to ours.
GO_MAPPINGS := $(foreach p,$(PROTOS:proto/%=%),--go_opt=M$(p)=$(GO_MODULE)/autoglmv1 --go-grpc_opt=M$(p)=$(GO_MODULE)/autoglmv1)
VERSION ?=

.PHONY: install lock proto lint format test soak run demo-model clean bench bench-gpu bench-tracing bench-kv-cache \
	node-deps buf release-proto go-client gpu-check gpu-wheels docs bench-constrained

install: $(STAMP)

$(STAMP): pyproject.toml $(STUBS)/pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q -c $(LOCK) "$(TORCH_SPEC)"
	@# The build backend too comes from the lock: the editable installs below build without isolation.
	$(PY) -m pip install -q -c $(LOCK) setuptools wheel
	@# The stubs are their own distribution, which the project pins: install it first so pip finds it.
	$(PIP_LOCKED) -e ./$(STUBS)
	$(PIP_LOCKED) -e '.[dev]'
	@touch $@

# Re-resolves requirements.lock to the newest releases pyproject.toml allows, then runs the suite on that set in
# a new .venv/ (docs/development.md says when). CI never does this: it installs the committed lock.
lock:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash tools/refresh-lock.sh
	rm -rf $(VENV)
	$(MAKE) test

# Regenerates the Python stubs (messages, services and .pyi) of the autoglm-proto distribution from proto/;
# tests fail when they are stale.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(STUBS) --grpc_python_out=$(STUBS) --pyi_out=$(STUBS) $(PROTOS)

# Rewrites the generated settings reference in docs/configuration.md from the settings (a test fails when stale).
docs: $(STAMP)
	$(PY) -m tools.config_reference

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) node-deps
	$(PY) -m pytest -q -p no:cacheprovider

# Minutes of load against CPU workers while a worker is killed and restarted (the suite runs a short version).
SOAK_SECONDS ?= 180
SOAK_STREAMS ?= 64
soak: $(STAMP)
	@mkdir -p bench-results
	$(PY) -m tests.load.soak --duration $(SOAK_SECONDS) --streams $(SOAK_STREAMS) --json bench-results/soak.json

# npm ci into tools/ (buf) and clients/node/ (grpc-js), once per lockfile change.
node-deps: $(NODE_STAMPS)

# tools/ uses `npm install --no-save` with its lockfile: the lockfile holds only the buf binaries this registry
# serves (linux), and `npm ci` refuses a lockfile that lacks the other platforms' optional packages. Every
# version is pinned exactly, so the install is the same.
tools/node_modules/.installed: tools/package-lock.json
ifdef NPM
	cd tools && npm install --no-save --no-audit --no-fund --loglevel=error
	@touch $@
else
	@echo "npm not found: skipping tools/ (the buf tests will be skipped)"
endif

clients/node/node_modules/.installed: clients/node/package-lock.json
ifdef NPM
	cd clients/node && $(NPM_CI)
	@touch $@
else
	@echo "npm not found: skipping clients/node/ (the Node.js client test will be skipped)"
endif

# The contract as a product: STANDARD + COMMENTS lint, FILE breaking check against the last release.
buf: tools/node_modules/.installed
	$(BUF) lint
	$(BUF) breaking --against $$(ls proto/released/v*.binpb | sort -V | tail -n 1)

# Releases the contract as VERSION (such as 0.2.0): the snapshot `buf breaking` checks against from now on.
release-proto: tools/node_modules/.installed
	@test -n "$(VERSION)" || { echo "usage: make release-proto VERSION=0.2.0"; exit 2; }
	@test ! -e proto/released/v$(VERSION).binpb || { echo "v$(VERSION) is already released"; exit 2; }
	$(BUF) lint
	$(BUF) build --exclude-source-info -o proto/released/v$(VERSION).binpb
	sed -i 's/^version = ".*"/version = "$(VERSION)"/' $(STUBS)/pyproject.toml
	sed -i 's/"autoglm-proto==[^"]*"/"autoglm-proto==$(VERSION)"/' pyproject.toml

# Generates the Go stubs from proto/ with Debian's protoc-gen-go / protoc-gen-go-grpc and builds the example.
go-client:
	@mkdir -p $(GO_GEN) .gopath/src clients/go/bin
	@ln -sfn $(CURDIR)/clients/go .gopath/src/$(GO_MODULE)
	protoc -I proto --go_out=clients/go --go_opt=module=$(GO_MODULE) --go-grpc_out=clients/go \
		--go-grpc_opt=module=$(GO_MODULE) $(GO_MAPPINGS) $(PROTOS)
	@# GOPATH mode: Debian installs the Go gRPC and protobuf sources under /usr/share/gocode; nothing is fetched.
	cd .gopath/src/$(GO_MODULE) && GOPATH=$(GO_PATH) GO111MODULE=off GOFLAGS= GOPROXY=off \
		go build -o $(CURDIR)/clients/go/bin/generate-stream ./cmd/generate-stream

# Serves MODEL (a checkpoint directory or a hub id in the local cache) over gRPC and OpenAI-compatible HTTP;
# without one, the random-weight demo checkpoint, built once into $(DEMO_MODEL)/.
run: $(STAMP)
	@if [ -z "$(MODEL)" ]; then $(VENV)/bin/autoglm-rpc demo-model --output $(DEMO_MODEL) --if-missing; fi
	@echo "gRPC on $(HOST):$(PORT), OpenAI-compatible HTTP on http://$(HOST):$(HTTP_PORT)/v1 (docs at /docs)"
	$(VENV)/bin/autoglm-rpc serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) \
		$(if $(MODEL),--model "$(MODEL)",--model $(DEMO_MODEL)) \
		$(if $(SERVED_MODEL_NAME),--served-model-name $(SERVED_MODEL_NAME),$(if $(MODEL),,--served-model-name autoglm-demo))

# A/B: throughput and TTFT with tracing off vs 10 % request sampling exported to an in-process OTLP sink.
# `make bench` / `make bench-gpu` call this too; BENCH_TRACING_ARGS passes options (e.g. --device cuda --model DIR).
BENCH_TRACING_ARGS ?=
bench-tracing: $(STAMP)
	$(PY) bench/tracing_overhead.py $(BENCH_TRACING_ARGS)

# Benchmarks (not part of `make test`): see docs/performance.md and `python -m bench --help`.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
DTYPE ?= bf16
PROMPT_LEN ?= 256
NEW_TOKENS ?= 128
CONCURRENCY ?= 1,16,64,256
OUT ?= bench-results/gpu-$(DTYPE)

$(BENCH_STAMP): $(STAMP)
	$(PIP_LOCKED) -e '.[dev,bench]'
	@touch $@

# The demo checkpoint on the CPU at 1/4/16/64 concurrent streams: serial generate(), static batch, the engine in
# process and the whole service; results in bench-results/cpu/. Then the tracing A/B (`make bench-tracing`).
bench: $(BENCH_STAMP)
	$(PY) -m bench cpu --out bench-results/cpu $(BENCH_ARGS)
	$(MAKE) bench-tracing
	$(MAKE) bench-kv-cache
	$(MAKE) bench-constrained

# Free against JSON-schema-constrained decoding, same prompts, at 1 and 16 streams (docs/performance.md,
# "Constrained decoding"); results in bench-results/constrained/.
bench-constrained: $(STAMP)
	$(PY) -m bench.constrained --out bench-results/constrained

# The paged KV cache against the slotted layout at one KV budget, and prefix caching on and off
# (docs/performance.md, "Paged KV cache and prefix caching"); results in bench-results/kv-cache/.
bench-kv-cache: $(STAMP)
	$(PY) -m bench.kv_cache --threads 1 --out bench-results/kv-cache

# The GLM-4-9B shape on a CUDA GPU, every baseline beside the engine and the service. Installs nothing (a GPU
# machine may be offline); point PY at its Python if it is not $(PY): make bench-gpu PY=python3 DTYPE=nf4
bench-gpu:
	$(PY) -m bench gpu --dtype $(DTYPE) --prompt-len $(PROMPT_LEN) --new-tokens $(NEW_TOKENS) \
		--concurrency $(CONCURRENCY) --out $(OUT) $(BENCH_ARGS)

# One prepared run on a CUDA GPU machine (docs/performance.md, "GPU check"): install the wheels brought in
# $(GPU_WHEELS), the gpu-marked tests, bf16 and nf4 at 1 and 256 streams, the tracing A/B; results in OUT (an OUT
# from the command line or the environment, else bench-results/gpu-check). It installs nothing from a registry and runs the
# machine's python3; REHEARSE=1 runs it on the CPU here with the demo model. GPU_CHECK_ARGS passes options.
GPU_WHEELS ?= .gpu-wheels
GPU_CHECK_ARGS ?=
GPU_CHECK_OUT := $(if $(filter command environment,$(origin OUT)),$(OUT),bench-results/gpu-check)
gpu-check:
	$(if $(REHEARSE),$(PY),python3) -m tools.gpu_check --out $(GPU_CHECK_OUT) --wheels $(GPU_WHEELS) \
		$(if $(REHEARSE),--rehearse) $(GPU_CHECK_ARGS)

# Downloads the wheels gpu-check brings (CPython 3.12, manylinux x86_64) into $(GPU_WHEELS) and reports their size
# against what the device machine carries.
gpu-wheels:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m tools.gpu_check.wheels --dest $(GPU_WHEELS)

demo-model: $(STAMP)
	$(VENV)/bin/autoglm-rpc demo-model --output $(DEMO_MODEL)

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .pytest_cache .ruff_cache *.egg-info bench-results tools/node_modules clients/node/node_modules \
		.gopath clients/go/bin $(GO_GEN)
