# Two commands for a fresh Debian machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: test demo demo-down bench lint deps system-deps clean

# System packages the suite needs: sshd for the testbed, a C compiler for the fake NVML library,
# PostgreSQL for the second store backend (a private cluster per test session), Podman with runc
# and debootstrap for image releases (the base image is built from Debian's packages), Chromium
# for the web UI's browser tests.
system-deps:
	@missing=""; \
	command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v podman >/dev/null 2>&1 || missing="$$missing podman"; \
	command -v runc >/dev/null 2>&1 || missing="$$missing runc"; \
	command -v debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# --compile-bytecode, as pip does by default: the suite starts many Pythons (TensorFlow's
# first import compiles for seconds), and no run writes .pyc where PYTHONDONTWRITEBYTECODE is set.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

deps: system-deps $(STAMP)

test: deps
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# ruff on everything (the host scripts against Python 3.9: orchestrator/hosts/remote/ruff.toml);
# mypy strict on the package and the tests, the host scripts under their own profile.
lint: deps
	$(BIN)/ruff check orchestrator tests
	$(BIN)/mypy
	$(BIN)/mypy --config-file orchestrator/hosts/remote/mypy.ini -p orchestrator.hosts.remote

bench: deps
	$(BIN)/python -m orchestrator.bench

# The whole story on one machine (orchestrator/demo.py): a 4-host testbed, the daemon in the
# background, plan, two rollouts (one stopped on its canary), a driver upgrade found by verify.
demo: deps
	$(BIN)/python -m orchestrator.demo up --dir $(DEMO_DIR)

# Stops the demo's daemon and testbed (nothing of them keeps running); the files stay in .demo/.
demo-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m orchestrator.demo down --dir $(DEMO_DIR); fi

clean:
	rm -rf $(VENV) .demo build *.egg-info
