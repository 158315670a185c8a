# One entry point for people and CI. Everything installs into .venv, at the exact versions
# (and hashes) of the lockfiles in requirements/, made from pyproject.toml by `make lock`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install run test test-latest lint fmt clean lock bench bench-quick bench-live bench-settle screenshots

$(STAMP): pyproject.toml requirements/test.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "settle needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements/test.lock
	$(PIP) --no-deps -e .
	touch $(STAMP)

# The benchmarks' extras (matplotlib, py-spy) stay out of `make test`.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) requirements/bench.lock
	$(PIP) --require-hashes -r requirements/bench.lock
	touch $(BENCH_STAMP)

install: $(STAMP)

# The demo: alice, bob and carol (password settle-demo), and a visible pending state.
run: install
	$(BIN)/settle demo
	SETTLE_DELAY_MS=$${SETTLE_DELAY_MS:-1500} $(BIN)/settle run

# SQLite always; then the suite again on PostgreSQL when one is reachable
# ($TEST_DATABASE_URL, or a local server), but for the browser tests: what they prove is
# the pages in Chromium, which do not change with the database (the API, stream and page
# tests do run on both), and they would take CI past its 25 minutes. The run creates and
# drops its own database.
PG_URL ?= $(or $(TEST_DATABASE_URL),postgresql://postgres@127.0.0.1:5432/postgres)

test: install
	$(BIN)/pytest
	@if $(BIN)/python -m tests.pg_reachable "$(PG_URL)"; then \
		echo "== the suite again on PostgreSQL (tests/browser ran on SQLite)"; \
		TEST_DATABASE_URL="$(PG_URL)" $(BIN)/pytest --ignore=tests/browser; \
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
	SETTLE_SCREENSHOTS=1 $(BIN)/pytest -q tests/browser/test_pages_trust.py tests/browser/test_pages_edges.py \
		tests/browser/test_passkeys_live.py

# The suite against the newest release of every dependency (what the pins would become),
# in a scratch venv; the versions it installed are kept in var/latest-versions.txt.
LATEST := var/venv-latest
test-latest:
	rm -rf $(LATEST)
	mkdir -p var
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --disable-pip-version-check --upgrade \
		$$($(PYTHON) -m tests.dependencies)
	$(LATEST)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	$(LATEST)/bin/pip freeze --exclude-editable > var/latest-versions.txt
	$(LATEST)/bin/pytest
	@if $(LATEST)/bin/python -m tests.pg_reachable "$(PG_URL)"; then \
		echo "== the suite again on PostgreSQL"; \
		TEST_DATABASE_URL="$(PG_URL)" $(LATEST)/bin/pytest; \
	fi

# The lockfiles again, from pyproject.toml (uv resolves; pip installs from them).
lock: install
	$(PIP) uv
	$(BIN)/uv pip compile -q pyproject.toml --extra test --python-version 3.11 --universal \
		--generate-hashes -o requirements/test.lock
	$(BIN)/uv pip compile -q pyproject.toml --extra test --extra bench --python-version 3.11 \
		--universal --generate-hashes -o requirements/bench.lock

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

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
