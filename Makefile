# Agora: `make run` brings the system up, `make stop` stops it, `make test` is what CI runs.
SHELL := /bin/bash
PY ?= python3
UV_BIN ?= $(shell command -v uv 2>/dev/null)
# Without a uv on PATH, the one pip installs is run as a module (wherever pip put it).
UV := $(if $(UV_BIN),$(UV_BIN),$(PY) -m uv)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run stop status test check lint typecheck bench deps system-deps uv

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet --user uv \
		|| $(PY) -m pip install --quiet uv \
		|| $(PY) -m pip install --quiet --user --break-system-packages uv

# The lock file is committed; `uv lock` only runs when it is missing.
uv.lock: | uv
	$(UV) lock

$(BIN)/agora: pyproject.toml uv.lock | uv
	$(UV) sync --frozen --quiet
	@touch $@

deps: $(BIN)/agora system-deps

# HAProxy is Ray Serve's fast ingress here (see docs/PERFORMANCE.md); optional.
system-deps:
	@if [ ! -x /usr/sbin/haproxy ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq haproxy >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq haproxy >/dev/null 2>&1)) \
		|| echo "haproxy not installed: Serve's default proxy will be used"; \
	fi

run: deps
	$(BIN)/agora up

stop:
	@if [ -x $(BIN)/agora ]; then $(BIN)/agora down; else echo "nothing to stop"; fi

status: deps
	$(BIN)/agora status

test: deps
	$(BIN)/pytest -q

lint: deps
	$(BIN)/ruff check actors serve streams ledger cluster tests loadtests
	$(BIN)/ruff format --check actors serve streams ledger cluster tests loadtests

typecheck: deps
	$(BIN)/mypy

check: lint typecheck test

bench: deps
	$(BIN)/python -m loadtests.bench
