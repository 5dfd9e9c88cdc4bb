# Agora: `make run` brings the system up, `make stop` stops it, `make test` is what CI runs.
SHELL := /bin/bash
PY ?= python3
UV_BIN ?= $(shell command -v uv 2>/dev/null)
# Without a uv on PATH, the one pip installs is run as a module (wherever pip put it).
UV := $(if $(UV_BIN),$(UV_BIN),$(PY) -m uv)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run stop status test check lint typecheck security coverage bench deps system-deps uv audit

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

deps: $(BIN)/agora system-deps ledger/node_modules/.installed

# The ledger's node tools (solc-js, anvil), pinned by ledger/package-lock.json.
ledger/node_modules/.installed: ledger/package.json ledger/package-lock.json
	npm ci --prefix ledger --no-audit --no-fund --loglevel=error
	@touch $@

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

# Bandit at medium severity and confidence (ruff's S rules check every level; skips
# and their reasons in pyproject.toml [tool.bandit]).
security: deps
	$(BIN)/bandit -q -c pyproject.toml -r actors serve streams ledger cluster -ll -ii

# The unit tier with coverage; fails under the floor in pyproject.toml [tool.coverage.report].
coverage: deps
	$(BIN)/pytest -q -p no:warnings tests/unit --cov=actors --cov=streams --cov=ledger \
		--cov=serve --cov=cluster --cov-report=term:skip-covered --cov-report=xml:var/coverage.xml

check: lint typecheck security coverage test

# pip-audit of the locked environment (uv.lock, every group, with hashes) against PyPI's
# per-release vulnerability data; --strict fails when a package cannot be audited. Not in
# .ci/run: the build machine cannot reach that data (docs/DECISIONS.md, "pip-audit").
audit: deps
	@mkdir -p var
	$(UV) export --frozen --all-groups --no-emit-project --format requirements-txt --quiet \
		--output-file var/audit-requirements.txt
	$(BIN)/pip-audit --strict --disable-pip --require-hashes --progress-spinner off \
		-r var/audit-requirements.txt

bench: deps
	$(BIN)/python -m loadtests.bench
