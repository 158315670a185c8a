"""Fixtures: a real Redis (bundled redis-server, or $TEST_REDIS_URL), a real SQLite file
per test (or PostgreSQL via $TEST_DATABASE_URL), a real uvicorn server on a loopback
port, and real arq workers. Nothing is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from arq import Worker, create_pool

from jobs.worker import create_worker
from server.domain import wire
from server.domain.clock import new_id, now_us
from server.domain.ledger import Order
from server.domain.model import Balance
from server.live.dispatch import Dispatcher
from server.redisbox import redis_settings, start_redis_server, stop_redis_server
from server.settings import Settings
from server.store import Conn, Store, create_schema, ledger, open_store
from server.store import accounts as admin
from server.store.audit import audit
from server.store.schema import metadata
from server.usecases import accounts as account_cases
from server.usecases.context import Context
from server.web import auth, passwords, protocol
from server.web.app import create_app

# The server settings of tests that serve an app of their own making.
TEST_SERVER = Settings(database_url="", redis_url=None, secret_key="", var_dir=Path())

# Cheap scrypt for the many users tests create; the production cost is tested separately.
passwords.set_cost(2**10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TEST_REDIS_URL")
    if external:
        yield external
        return
    var = tmp_path_factory.mktemp("redis")
    proc = start_redis_server(var, var / "redis.sock", appendonly=False)
    try:
        yield f"unix://{var / 'redis.sock'}"
    finally:
        stop_redis_server(proc)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """With $TEST_DATABASE_URL (a PostgreSQL server URL; its database is only used to
    connect), create a database of our own for this run and drop it at the end."""
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        yield None
        return
    import asyncpg

    name = f"settle_test_{uuid.uuid4().hex[:10]}"
    dsn = server.replace("postgresql+asyncpg://", "postgresql://")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, postgres_url: str | None) -> Settings:
    db_url = postgres_url or f"sqlite:///{tmp_path / 'settle.db'}"
    return Settings(
        database_url=db_url,
        redis_url=redis_url,
        secret_key="test-secret-key",  # noqa: S106
        var_dir=tmp_path,
        # Each test gets its own Redis key space: queues and channels never cross.
        redis_prefix=f"t{uuid.uuid4().hex[:12]}",
        sweep_after_ms=500,
        sweep_interval_s=1,
        job_timeout_s=3,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = open_store(settings)
    await s.connect()
    await create_schema(s)
    if not s.is_sqlite:  # one database per run: each test starts from empty tables
        tables = ", ".join(t.name for t in metadata.sorted_tables)
        await execute(s, f"TRUNCATE {tables} CASCADE")
    try:
        yield s
        report = await audit(s)
        assert report.ok, "ledger invariants violated after the test:\n" + report.render()
    finally:
        await s.disconnect()


async def execute(store: Store, *statements: Any) -> None:
    """Run statements (SQL text or SQLAlchemy) in one write transaction."""

    async def body(conn: Conn) -> None:
        for statement in statements:
            await conn.execute(statement)

    await store.transaction(body)


async def accept(
    store: Store,
    user_id: str,
    from_account: str,
    to_account: str,
    amount: int,
    memo: str = "",
    key: str | None = None,
) -> ledger.Accepted:
    """Accept a transfer straight through the ledger: committed, but nothing enqueued
    or published (as if the web process died right after the commit)."""
    order = Order(user_id, from_account, to_account, amount, memo, key)
    return await store.transaction(lambda conn: ledger.accept(conn, order, new_id("tr"), now_us()))


def balance_json(row: Any) -> dict[str, str]:
    """An accounts row's balance as the API and the stream write it."""
    return msgspec.structs.asdict(wire.balance(Balance.of(row)))


async def fund(store: Store, account_id: str, cents: int) -> None:
    """A deposit from the bank, committed but not published (nobody listens yet)."""
    await store.transaction(lambda conn: admin.deposit(conn, account_id, cents))


@dataclasses.dataclass
class Customer:
    username: str
    user_id: str
    account: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclasses.dataclass
class Stack:
    """A running settle web server plus what tests need to drive it."""

    settings: Settings
    store: Store
    base_url: str
    client: httpx.AsyncClient

    async def customer(
        self, deposit: str = "100.00", name: str | None = None, display_name: str | None = None
    ) -> Customer:
        """A user with one account (funded by ``deposit``), who goes by ``display_name``
        (by default their username)."""
        username = name or f"user{uuid.uuid4().hex[:8]}"
        user_id, account = await admin.create_user(
            self.store,
            username,
            passwords.hash_password("pw-" + username),
            display_name=display_name,
        )
        if deposit != "0":
            from server.domain.money import parse_amount

            await fund(self.store, account, parse_amount(deposit))
        token = await auth.issue_token(self.store, user_id, 3600)
        return Customer(username, user_id, account, token)

    async def transfer(
        self, who: Customer, to: str, amount: Any, key: str | None = None, **extra: Any
    ) -> httpx.Response:
        headers = dict(who.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        body = {"from_account": who.account, "to_account": to, "amount": amount, **extra}
        return await self.client.post("/api/transfers", json=body, headers=headers)

    async def account(self, who: Customer) -> dict[str, Any]:
        r = await self.client.get(f"/api/accounts/{who.account}", headers=who.headers)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def status_of(self, who: Customer, transfer_id: str) -> str:
        r = await self.client.get(f"/api/transfers/{transfer_id}", headers=who.headers)
        assert r.status_code == 200, r.text
        return str(r.json()["status"])

    def worker(self, burst: bool = True) -> Worker:
        assert self.settings.redis_url is not None
        return create_worker(
            self.settings,
            redis_settings(self.settings, self.settings.redis_url),
            burst=burst,
            handle_signals=False,
            store=self.store,
        )

    @contextlib.asynccontextmanager
    async def usecases(self) -> AsyncIterator[Context]:
        """The use cases' context, publishing on this stack's Redis as a process of it."""
        assert self.settings.redis_url is not None
        pool = await create_pool(redis_settings(self.settings, self.settings.redis_url))
        dispatch = Dispatcher(pool, self.settings)
        try:
            yield Context(self.settings, self.store, dispatch)
        finally:
            await dispatch.close()
            await pool.aclose()

    async def freeze(self, account_id: str) -> None:
        """Freeze the account as ``settle account freeze`` does: every screen told."""
        async with self.usecases() as ctx:
            await account_cases.freeze(ctx, account_id)

    async def unfreeze(self, account_id: str) -> None:
        async with self.usecases() as ctx:
            await account_cases.unfreeze(ctx, account_id)

    async def deposit(self, account_id: str, cents: int) -> None:
        async with self.usecases() as ctx:
            await account_cases.deposit(ctx, account_id, cents)

    async def settle_all(self) -> None:
        """Run a burst worker until the queue is empty (no sleeping, no polling)."""
        worker = self.worker()
        try:
            await worker.main()
        finally:
            await worker.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def fleet(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """settle subprocesses by name (``tests.fleet.Fleet``), all stopped at the end."""
    from tests.fleet import Fleet

    f = Fleet(settings, tmp_path)
    try:
        yield f
    finally:
        f.stop_all()


def free_socket() -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it each response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(
    app: Any, settings: Settings | None = None, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn, configured as ``settle web`` is (``server.web.protocol``), on a
    free loopback port (or ``sock``, bound already) in this event loop; yield its URL."""
    sock = sock or free_socket()
    port = sock.getsockname()[1]
    options = protocol.uvicorn_options(settings or TEST_SERVER)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", ws_ping_interval=None, **options)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def stack(settings: Settings, store: Store) -> AsyncIterator[Stack]:
    app = create_app(settings, store=store)
    async with serve(app, settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield Stack(settings, store, url, client)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a settle subprocess needs to join this test's stack."""
    assert settings.redis_url is not None
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key,
        "SETTLE_VAR_DIR": str(settings.var_dir),
        "SETTLE_REDIS_PREFIX": settings.redis_prefix,
        "SETTLE_SWEEP_AFTER_MS": str(settings.sweep_after_ms),
        "SETTLE_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
        "SETTLE_JOB_TIMEOUT_S": str(settings.job_timeout_s),
        "SETTLE_DELAY_MS": str(settings.settle_delay_ms),
        # One value in every process of a deployment (the default differs by database).
        "SETTLE_PARTITIONS": str(settings.settle_partitions),
    }
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def account_events(settings: Settings, account_id: str) -> AsyncIterator[Any]:
    """A raw Redis subscription to an account's published events (to await them)."""
    from redis.asyncio import Redis

    from server.live.dispatch import channel

    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel(settings, account_id))
    try:
        yield pubsub
    finally:
        await pubsub.aclose()
        await client.aclose()


async def next_event(pubsub: Any, type_: str, transfer_id: str, within: float = 30) -> Any:
    """Wait for a published event of this type for this transfer."""
    import orjson

    async def wait() -> Any:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=within)
            if msg is None:
                continue
            event = orjson.loads(msg["data"])
            if event["type"] == type_ and event["transfer"]["id"] == transfer_id:
                return event

    return await asyncio.wait_for(wait(), within)
