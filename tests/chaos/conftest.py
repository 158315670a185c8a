"""Chaos fixtures: a deployment of settle in subprocesses, with a redis-server of its
own (killed and restarted by the tests), on SQLite or PostgreSQL ($TEST_DATABASE_URL).

Every test here is marked ``chaos``: ``make test`` deselects them, ``make chaos`` runs
them and prints (and writes to var/chaos-summary.md) the summary table.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.settings import Settings
from server.store import Store
from tests.chaos.harness import Chaos, Deployment, Redis, Round, Watcher, holders, render
from tests.conftest import free_port

ROUNDS: list[Round] = []
SUMMARY = Path("var/chaos-summary.md")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROUNDS:
        return
    backend = "PostgreSQL" if os.environ.get("TEST_DATABASE_URL") else "SQLite"
    table = render(ROUNDS)
    terminalreporter.write_sep("=", "chaos summary")
    terminalreporter.write_line(table)
    SUMMARY.parent.mkdir(exist_ok=True)
    with SUMMARY.open("a") as f:
        f.write(f"\n{backend}:\n\n{table}\n")


@pytest.fixture
def chaos_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    # A short directory: a unix socket path is limited to 107 bytes.
    redis = Redis(tmp_path_factory.mktemp("r"))
    redis.start(appendonly=True)
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def settings(tmp_path: Path, chaos_redis: Redis, postgres_url: str | None) -> Settings:
    return Settings(
        database_url=postgres_url or f"sqlite:///{tmp_path / 'settle.db'}",
        redis_url=chaos_redis.url,
        secret_key="chaos-secret-key",  # noqa: S106
        var_dir=tmp_path,
        redis_prefix=f"c{uuid.uuid4().hex[:12]}",
        # Long enough for some cancels to win the race with settlement.
        settle_delay_ms=50,
        # Heal fast: a lost job is re-enqueued after 1 s, settled directly after 3 s,
        # and a SIGKILLed job's arq in-progress key lapses after 2 + 10 s.
        sweep_after_ms=1000,
        sweep_interval_s=1,
        job_timeout_s=2,
    )


@pytest.fixture
async def fleet(settings: Settings, store: Store, tmp_path: Path) -> AsyncIterator[Deployment]:
    f = Deployment(settings, tmp_path, free_port())
    f.launch("web")
    f.launch("worker")
    try:
        await f.ready(f.port)
        yield f
    finally:
        f.stop_all()


@pytest.fixture
async def chaos(fleet: Deployment, store: Store, chaos_redis: Redis) -> AsyncIterator[Chaos]:
    """Eight funded accounts, four of them watched over the WebSocket."""
    people = await holders(store, 8, 10_000_00)
    c = Chaos(store, fleet, chaos_redis, people, [Watcher(fleet.base_url, h) for h in people[:4]])
    tasks = [asyncio.create_task(w.run()) for w in c.watchers]
    try:
        yield c
    finally:
        ROUNDS.extend(c.rounds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
