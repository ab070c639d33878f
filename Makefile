# The lab's entry points. Every target creates and uses the project-local virtualenv (.venv)
# and the project-local geth (tools/bin/geth) by itself, so a fresh clone needs no other step.
SHELL := /bin/bash
SCENARIO ?= homes10
RUNTIME ?=
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GETH := tools/bin/geth
GETH_VERSION := v1.13.15
LAB := $(BIN)/lab

.PHONY: setup up run down watch solve test test-slow test-faults test-compose images-offline bench-rounds bench-admm bench-gas bench-scale contracts docs lint clean

setup: $(STAMP) $(GETH)

$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# geth v1.13.15 is the last release with Clique sealing (DESIGN.md). Built from its Go
# module; the linkname flag works around fjl/memsize on Go >= 1.23.
$(GETH):
	@if ! command -v go >/dev/null; then \
	  echo "note: no Go toolchain: geth $(GETH_VERSION) not built. The Compose runtime does not need it" \
	    "(its images carry geth); the local runtime and make test do: install Go (>= 1.22), or place" \
	    "the official geth $(GETH_VERSION) release binary at $(GETH)." >&2; \
	else \
	  mkdir -p tools/bin && \
	  { GOBIN=$(CURDIR)/tools/bin go install -ldflags=-checklinkname=0 \
	      github.com/ethereum/go-ethereum/cmd/geth@$(GETH_VERSION) \
	    || GOTOOLCHAIN=go1.22.12 GOBIN=$(CURDIR)/tools/bin go install \
	      github.com/ethereum/go-ethereum/cmd/geth@$(GETH_VERSION); } && \
	  { $(GETH) version | grep -q '^Version: 1.13.15' || { echo "error: $(GETH) is not 1.13.15" >&2; exit 1; }; }; \
	fi

up: setup
	$(LAB) up $(SCENARIO) $(if $(RUNTIME),--runtime $(RUNTIME))

run: setup
	$(LAB) run $(SCENARIO) $(if $(RUNTIME),--runtime $(RUNTIME))

down: setup
	$(LAB) down

watch: setup
	$(LAB) watch

solve: setup
	$(LAB) solve $(SCENARIO)

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

# Container images without a registry (Debian base by debootstrap, podman); reused when present.
images-offline: setup
	$(BIN)/python -m lab.images build-offline

test-compose: setup images-offline
	$(BIN)/pytest -q -m compose tests/test_compose.py

# homes10 under faults (device kills, a stopped member node, signer, broker and bridge
# restarts): every run finalizes, verifies and delivers every switch (lab/faults.py).
test-faults: setup
	$(BIN)/python -m lab.faults

# homes10 ten times in a row: slow rounds (> max(3x median, 3 s)) and stuck members.
bench-rounds: setup
	$(BIN)/python -m lab.bench_rounds --scenario $(SCENARIO)

bench-admm: setup
	$(LAB) bench-admm $(SCENARIO)

bench-gas: setup
	$(BIN)/python -m aggregator_contract.bench_gas

# The whole lab on geth at N = 10, 100, 300, 1000 (about 25 min on 2 cores).
bench-scale: setup
	$(BIN)/python -m lab.bench_scale

# Recompile the shipped contract artifacts (aggregator_contract/artifacts/) after editing a .vy.
contracts: setup
	$(BIN)/python -m aggregator_contract.compile

# docs/models.md and configs/scenario.schema.json, generated from scenario/components
docs: setup
	$(BIN)/python -m scenario.docs

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) tools runs
