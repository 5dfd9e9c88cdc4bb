# Agora: `make run` brings the system up, `make stop` stops it, `make test` is what CI runs.
SHELL := /bin/bash
PY ?= python3
UV_BIN ?= $(shell command -v uv 2>/dev/null)
# Without a uv on PATH, the one pip installs is run as a module (wherever pip put it).
UV := $(if $(UV_BIN),$(UV_BIN),$(PY) -m uv)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run stop status test check lint typecheck security coverage coverage-unit bench deps system-deps uv audit

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

# The whole suite, once; it also records coverage (var/.coverage) for `make coverage`.
test: deps
	$(BIN)/pytest -q --durations=25 $(COV_ARGS) --cov-report=

lint: deps
	$(BIN)/ruff check actors serve streams ledger cluster tests loadtests
	$(BIN)/ruff format --check actors serve streams ledger cluster tests loadtests

typecheck: deps
	$(BIN)/mypy

# Bandit at medium severity and confidence (ruff's S rules check every level; skips
# and their reasons in pyproject.toml [tool.bandit]).
security: deps
	$(BIN)/bandit -q -c pyproject.toml -r actors serve streams ledger cluster -ll -ii

# Coverage gate (docs/DECISIONS.md, "Coverage gate"). `make test` records line coverage of
# the code that runs in the test process, over all three tiers in that one run (code inside
# Ray workers and Serve replicas is not measured); `make coverage` re-runs nothing: it checks
# the floors below on that data (var/coverage.xml too). The floors are issue 12's target:
# 85% on actors/, streams/ and ledger/, 75% overall (total = the five packages together);
# measured by `make test; make coverage` on 2026-12-04: actors 93.6, streams 93.5, ledger 96.0,
# total 79.0. They only rise.
COV_PACKAGES := actors serve streams ledger cluster
COV_ARGS := $(addprefix --cov=,$(COV_PACKAGES)) --cov-fail-under=0
COV_FLOORS := actors=85 streams=85 ledger=85 total=75
COV_DATA ?= var/.coverage
COV_GATE ?= 1

coverage: deps
	@test -s $(COV_DATA) || { echo "no coverage data in $(COV_DATA): run make test first"; exit 1; }
	@$(BIN)/coverage report --data-file=$(COV_DATA) --skip-covered --skip-empty --precision=1
	@$(BIN)/coverage xml --data-file=$(COV_DATA) -q -o var/coverage.xml
	@fail=0; for floor in $(COV_FLOORS); do \
		name=$${floor%=*}; min=$${floor#*=}; only=; \
		[ "$$name" = total ] || only="--include=$$name/*"; \
		got=$$($(BIN)/coverage report --data-file=$(COV_DATA) $$only --format=total --precision=1 \
			2>/dev/null | grep -E '^[0-9.]+$$' || echo 0); \
		if awk -v g="$$got" -v m="$$min" 'BEGIN { exit !(g + 0 >= m + 0) }'; then verdict=ok; \
		else verdict="UNDER THE FLOOR"; fail=1; fi; \
		printf 'coverage %-8s %5s%%  (floor %s%%) %s\n' "$$name" "$$got" "$$min" "$$verdict"; \
	done; [ "$(COV_GATE)" = 0 ] || exit $$fail

# The unit tier alone, with the same per-package figures but no gate (quick feedback).
coverage-unit: deps
	COVERAGE_FILE=var/.coverage-unit $(BIN)/pytest -q -p no:warnings tests/unit $(COV_ARGS) \
		--cov-report=
	@$(MAKE) --no-print-directory coverage COV_DATA=var/.coverage-unit COV_GATE=0

check: lint typecheck security test coverage

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
