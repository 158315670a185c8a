"""Settled transfers per second with 1 and 2 `settle worker` processes, on SQLite and on
PostgreSQL (when one is reachable).

For each database, N transfers among A funded accounts are accepted once through
``ledger.accept`` into a seed database; each run starts from a copy of it (SQLite:
the backup API; PostgreSQL: CREATE DATABASE ... TEMPLATE), starts W workers, waits until
they are all alive, rings every settlement partition at once and times from the ring
until no transfer is pending (the database polled every 50 ms). "window" is first to last
settled_at. The sweeper is pushed out of the way (SETTLE_SWEEP_AFTER_MS=1h): the seed's
transfers are old, and this measures the drainers.

Redis is the bundled redis-server in a temporary directory; the PostgreSQL databases are
our own, created and dropped.

    python -m bench.settle_throughput [--transfers 20000] [--accounts 100] [--workers 1 2]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres | --no-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from arq import create_pool

from bench.stack import connected, pending, redis_server, start, stop, wait_crew
from server.domain.ledger import Order
from server.live.dispatch import Dispatcher
from server.redisbox import redis_settings
from server.settings import Settings
from server.store import accounts as admin
from server.store import create_schema, ledger
from server.store.audit import audit
from server.store.schema import new_id, now_us, transfers
from server.web import passwords

DEPOSIT = 1_000_000_00


@dataclasses.dataclass
class Row:
    database: str
    batch: int
    workers: int
    transfers: int
    seconds: float
    window: float
    left: int  # still pending when the run timed out


@dataclasses.dataclass(frozen=True)
class Case:
    database: str
    url: str
    batch: int
    workers: int


def settings_for(url: str, redis_url: str, var: Path) -> Settings:
    return Settings(
        database_url=url,
        redis_url=redis_url,
        secret_key="bench-secret-key",  # noqa: S106
        var_dir=var,
        redis_prefix=f"bench{uuid.uuid4().hex[:10]}",
        sweep_after_ms=3_600_000,
    )


async def seed(settings: Settings, n: int, accounts: int) -> None:
    """Fund the accounts and accept n transfers among them, all pending."""
    rng = random.Random(7)
    password = passwords.hash_password("bench")
    async with connected(settings) as store:
        await create_schema(store)
        owners: list[tuple[str, str]] = []
        for i in range(accounts):
            user_id, account = await admin.create_user(store, f"bench{i}", password)
            await store.transaction(
                functools.partial(admin.deposit, account_id=account, amount=DEPOSIT)
            )
            owners.append((user_id, account))
        pairs = [rng.sample(owners, 2) for _ in range(n)]
        # PostgreSQL takes concurrent acceptances (a pool); SQLite serializes them anyway.
        gate = asyncio.Semaphore(1 if store.is_sqlite else 16)

        async def accept(src: tuple[str, str], dst: tuple[str, str]) -> None:
            async with gate:
                order = Order(src[0], src[1], dst[1], rng.randint(1, 100))
                await store.transaction(
                    lambda conn: ledger.accept(conn, order, new_id("tr"), now_us())
                )

        await asyncio.gather(*(accept(src, dst) for src, dst in pairs))


async def run(settings: Settings, case: Case, give_up_s: float, log_dir: Path) -> Row:
    label = f"{case.database}-b{case.batch}-w{case.workers}"
    async with connected(settings) as store:
        n = await pending(store)
        assert settings.redis_url is not None
        env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "SECRET_KEY": settings.secret_key,
            "SETTLE_VAR_DIR": str(settings.var_dir),
            "SETTLE_REDIS_PREFIX": settings.redis_prefix,
            "SETTLE_SWEEP_AFTER_MS": str(settings.sweep_after_ms),
            "SETTLE_BATCH_SIZE": str(case.batch),
        }
        log = log_dir / f"{label}-workers.log"
        procs = [start("server.cli", "worker", env=env, log=log) for _ in range(case.workers)]
        try:
            await wait_crew(settings, case.workers)
            redis = await create_pool(redis_settings(settings, settings.redis_url))
            dispatch = Dispatcher(redis, settings)
            started = time.perf_counter()
            await dispatch.ring(range(settings.settle_partitions))
            await dispatch.close()
            await redis.aclose()
            left = await pending(store)
            while left and time.perf_counter() - started < give_up_s:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited; see {log}")
                await asyncio.sleep(0.05)
                left = await pending(store)
            seconds = time.perf_counter() - started
        finally:
            stop(procs)
        span = await store.fetch_one(
            sa.select(
                sa.func.min(transfers.c.settled_at), sa.func.max(transfers.c.settled_at)
            ).where(transfers.c.memo == "", transfers.c.status != "pending")
        )
        assert span is not None
        first, last = span.values()
        report = await audit(store)
        assert report.ok, report.render()
    window = 0.0 if first is None else (last - first) / 1e6
    return Row(case.database, case.batch, case.workers, n, seconds, window, left)


async def sqlite_rows(tmp: Path, redis_url: str, args: argparse.Namespace) -> list[Row]:
    seed_path = tmp / "seed.db"
    await seed(
        settings_for(f"sqlite:///{seed_path}", redis_url, tmp), args.transfers, args.accounts
    )
    rows = []
    for batch in args.batch_size:
        for workers in args.workers:
            path = tmp / f"run-b{batch}-w{workers}.db"
            with sqlite3.connect(seed_path) as src, sqlite3.connect(path) as dst:
                src.backup(dst)
            case = Case("sqlite", f"sqlite:///{path}", batch, workers)
            rows.append(
                await run(
                    settings_for(case.url, redis_url, tmp), case, args.timeout, args.log_dir or tmp
                )
            )
            print(table(rows[-1:], header=False), flush=True)
    return rows


async def pg_admin(server: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server, timeout=3)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def reachable(server: str) -> bool:
    try:
        await pg_admin(server, "SELECT 1")
    except Exception:
        return False
    return True


async def postgres_rows(tmp: Path, redis_url: str, args: argparse.Namespace) -> list[Row]:
    server = args.pg.replace("postgresql+asyncpg://", "postgresql://")
    base = server.rsplit("/", 1)[0]
    name = f"settle_bench_{uuid.uuid4().hex[:10]}"
    made = [f"{name}_seed"]
    await pg_admin(server, f'CREATE DATABASE "{made[0]}"')
    try:
        await seed(settings_for(f"{base}/{made[0]}", redis_url, tmp), args.transfers, args.accounts)
        rows = []
        for batch in args.batch_size:
            for workers in args.workers:
                made.append(f"{name}_b{batch}_w{workers}")
                await pg_admin(server, f'CREATE DATABASE "{made[-1]}" TEMPLATE "{made[0]}"')
                case = Case("postgresql", f"{base}/{made[-1]}", batch, workers)
                rows.append(
                    await run(
                        settings_for(case.url, redis_url, tmp),
                        case,
                        args.timeout,
                        args.log_dir or tmp,
                    )
                )
                print(table(rows[-1:], header=False), flush=True)
        return rows
    finally:
        await pg_admin(server, *(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in made))


def table(rows: list[Row], header: bool = True) -> str:
    lines = []
    if header:
        lines.append(
            f"{'database':<11} {'batch':>5} {'workers':>7} {'transfers':>9} {'seconds':>8}"
            f" {'transfers/s':>11} {'window s':>8} {'window tr/s':>11}"
        )
    for r in rows:
        settled = r.transfers - r.left
        rate = f"{settled / r.seconds:>11.0f}"
        window = f"{settled / r.window:>11.0f}" if r.window else f"{'-':>11}"
        note = f"  TIMED OUT: {r.left} still pending" if r.left else ""
        lines.append(
            f"{r.database:<11} {r.batch:>5} {r.workers:>7} {r.transfers:>9} {r.seconds:>8.2f}"
            f" {rate} {r.window:>8.2f} {window}{note}"
        )
    return "\n".join(lines)


async def main() -> None:
    default_pg = (
        os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[Settings.settle_batch_size],
        help="SETTLE_BATCH_SIZE values to run (default: the settings' default)",
    )
    parser.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    parser.add_argument(
        "--timeout", type=float, default=300, help="give up on a run after this many seconds"
    )
    parser.add_argument("--pg", default=default_pg, help="a PostgreSQL server URL")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="settle-bench-") as name,
        redis_server(Path(name)) as redis_url,
    ):
        tmp = Path(name)
        rows = [] if args.no_sqlite else await sqlite_rows(tmp, redis_url, args)
        if args.no_pg:
            pass
        elif await reachable(args.pg):
            rows += await postgres_rows(tmp, redis_url, args)
        else:
            print(f"no PostgreSQL reachable at {args.pg}: PostgreSQL part skipped")
    print()
    print(table(rows))


if __name__ == "__main__":
    asyncio.run(main())
