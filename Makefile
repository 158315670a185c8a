# One entry point for people and CI. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint fmt clean bench bench-quick bench-live bench-settle screenshots

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "settle needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The benchmarks' extras (matplotlib, py-spy) stay out of `make test`.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

install: $(STAMP)

# The demo: alice, bob and carol (password settle-demo), and a visible pending state.
run: install
	$(BIN)/settle demo
	SETTLE_DELAY_MS=$${SETTLE_DELAY_MS:-1500} $(BIN)/settle run

# SQLite always; then the whole suite again on PostgreSQL when one is reachable
# ($TEST_DATABASE_URL, or a local server). The run creates and drops its own database.
PG_URL ?= $(or $(TEST_DATABASE_URL),postgresql://postgres@127.0.0.1:5432/postgres)

test: install
	$(BIN)/pytest
	@if $(BIN)/python -m tests.pg_reachable "$(PG_URL)"; then \
		echo "== the suite again on PostgreSQL"; \
		TEST_DATABASE_URL="$(PG_URL)" $(BIN)/pytest; \
	else \
		echo "== no PostgreSQL reachable at $(PG_URL): PostgreSQL run skipped"; \
	fi

# Fault injection (tests/chaos): kill -9 of worker and web, Redis killed with and without
# its append-only file, PostgreSQL refusing connections, clients hanging up mid-request.
# SQLite, then PostgreSQL when reachable; about 3 minutes. The summary table of each run
# is printed and kept in var/chaos-summary.md.
chaos: install
	rm -f var/chaos-summary.md
	$(BIN)/pytest -m chaos tests/chaos
	@if $(BIN)/python -m tests.pg_reachable "$(PG_URL)"; then \
		echo "== the chaos suite again on PostgreSQL"; \
		TEST_DATABASE_URL="$(PG_URL)" $(BIN)/pytest -m chaos tests/chaos; \
	else \
		echo "== no PostgreSQL reachable at $(PG_URL): PostgreSQL chaos run skipped"; \
	fi
	@cat var/chaos-summary.md

# The screenshots of docs/pages.md, made by the browser tests (needs /usr/bin/chromium).
screenshots: install
	SETTLE_SCREENSHOTS=1 $(BIN)/pytest -q tests/browser/test_pages_trust.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every performance figure against its target and the ceiling of a minimal endpoint; starts
# its own redis, web and worker. Writes bench/results/latest.{json,md}, latency-cdf.png.
bench: $(BENCH_STAMP)
	ulimit -n 20000 2>/dev/null || true; $(BIN)/python -u -m bench.run

# The same at a smaller scale, in under a minute (writes quick.{json,md}, quick-latency-cdf.png).
bench-quick: $(BENCH_STAMP)
	ulimit -n 20000 2>/dev/null || true; $(BIN)/python -u -m bench.run --quick

# WebSocket latency under load: starts its own redis, web and worker (about 20 s).
bench-live: install
	ulimit -n 20000 2>/dev/null || true; $(BIN)/python -u -m bench.live

# Settled transfers/s with 1 and 2 workers, SQLite and (if reachable) PostgreSQL: 20,000
# queued transfers each; own databases and bundled redis, all removed after (minutes).
bench-settle: install
	$(BIN)/python -u -m bench.settle_throughput --pg "$(PG_URL)"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
