# Two commands for a fresh Debian machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: test demo demo-down bench lint deps system-deps clean

# System packages the suite needs: sshd for the testbed, a C compiler for the fake NVML library.
system-deps:
	@missing=""; \
	command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

deps: system-deps $(STAMP)

test: deps
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check orchestrator tests
	$(BIN)/mypy

bench: deps
	$(BIN)/python -m orchestrator.bench

demo: deps
	$(BIN)/orchestrator testbed up --hosts 4 --profile h100 --profile h100 --profile t4 --profile old-driver --dir $(DEMO_DIR)
	$(BIN)/orchestrator probe --inventory $(DEMO_DIR)/inventory.yaml --all
	@echo
	@echo "The testbed is up in $(DEMO_DIR): its GPUs are simulated by a fake libnvidia-ml.so.1."
	@echo "Stop it with: make demo-down"

demo-down:
	@if [ -x $(BIN)/orchestrator ]; then $(BIN)/orchestrator testbed down --dir $(DEMO_DIR); fi

clean:
	rm -rf $(VENV) .demo build *.egg-info
