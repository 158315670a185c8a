"""Settlement scale-out on PostgreSQL: settled transfers per second with 1, 2 and 4
``settle worker`` processes, the database reached directly and through a proxy that adds
a round trip of a few milliseconds (a database on another machine, as in any real
deployment).

Transfers go between disjoint pairs of accounts (sender i pays recipient i only), the
senders chosen so that every settlement partition has as many of them. For each case the
transfers are accepted once into a seed database; each run starts from a copy of it
(CREATE DATABASE ... TEMPLATE), starts W workers, waits until all of them say they are
alive, rings every partition at once, and times the settling. The rate is taken over the
middle half of the settling span (from the 25th to the 75th percentile of ``settled_at``),
so that neither the start nor the last drainer to finish counts.

The proxy (``LatencyProxy``) runs in this process: each chunk either way is passed on
half the added round trip after it arrived, in order, without limiting throughput.

    python -m bench.scaleout [--transfers 20000] [--pairs 64] [--delay-ms 0 2]
        [--workers 1 2 4] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import random
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from arq import create_pool

from bench.settle_throughput import pg_admin, reachable
from bench.stack import (
    connected,
    cpu_seconds,
    cpu_seconds_named,
    machine_cpu,
    pending,
    redis_server,
    start,
    stop,
    wait_crew,
)
from server.domain.clock import new_id, now_us
from server.domain.ledger import Order
from server.domain.settlement import partition_of_account
from server.live.dispatch import Dispatcher
from server.redisbox import redis_settings
from server.settings import Settings
from server.store import accounts as admin
from server.store import create_schema, ledger
from server.store.audit import audit
from server.store.schema import transfers

DEPOSIT = 1_000_000_00
MEMO = "scaleout"


class LatencyProxy:
    """A TCP proxy to ``target`` that adds ``delay_ms`` of round trip."""

    def __init__(self, target: tuple[str, int], delay_ms: float) -> None:
        self.target = target
        self.half_s = delay_ms / 2000
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Pass each chunk on ``half_s`` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    dst.close()
                    return
                dst.write(chunk)
                await dst.drain()

        sender = asyncio.create_task(send())
        try:
            while chunk := await src.read(65536):
                queue.put_nowait((loop.time() + self.half_s, chunk))
            queue.put_nowait((loop.time() + self.half_s, b""))
            await sender
        finally:
            sender.cancel()


@dataclasses.dataclass
class Row:
    delay_ms: float
    workers: int
    transfers: int
    seconds: float  # ring to the last settlement
    rate: float  # over the middle half of the span
    left: int
    # CPU per settled transfer, in µs, from the ring until none is left: the workers',
    # PostgreSQL's (every backend), and this process's (the proxy); the machine's cores
    # busy over that span, in percent of all of them.
    worker_us: float = 0.0
    pg_us: float = 0.0
    proxy_us: float = 0.0
    busy: float = 0.0


def settings_for(url: str, redis_url: str, var: Path, partitions: int) -> Settings:
    return Settings(
        database_url=url,
        redis_url=redis_url,
        secret_key="bench-secret-key",  # noqa: S106
        var_dir=var,
        redis_prefix=f"scale{uuid.uuid4().hex[:10]}",
        sweep_after_ms=3_600_000,
        settle_partitions=partitions,
    )


async def seed(settings: Settings, n: int, pairs: int) -> None:
    """``pairs`` senders, as many in every partition, each with a recipient of its own;
    n transfers among the pairs, accepted through the ledger, all pending."""
    rng = random.Random(7)
    parts = settings.settle_partitions
    per_partition = -(-pairs // parts)
    async with connected(settings) as store:
        await create_schema(store)
        senders: dict[int, list[tuple[str, str]]] = {p: [] for p in range(parts)}
        recipients: list[str] = []
        i = 0
        while any(len(s) < per_partition for s in senders.values()):
            user_id, account = await admin.create_user(store, f"s{i}", "-")
            i += 1
            side = senders[partition_of_account(account, parts)]
            if len(side) < per_partition:
                await store.transaction(
                    functools.partial(admin.deposit, account_id=account, amount=DEPOSIT)
                )
                side.append((user_id, account))
        for j in range(per_partition * parts):
            recipients.append((await admin.create_user(store, f"r{j}", "-"))[1])
        pairs_list = [
            (s, recipients[k]) for k, s in enumerate(x for side in senders.values() for x in side)
        ]
        gate = asyncio.Semaphore(16)

        async def accept(src: tuple[str, str], dst: str) -> None:
            order = Order(src[0], src[1], dst, rng.randint(1, 100), MEMO)
            async with gate:
                await store.transaction(
                    lambda conn: ledger.accept(conn, order, new_id("tr"), now_us())
                )

        await asyncio.gather(*(accept(*rng.choice(pairs_list)) for _ in range(n)))


async def run(settings: Settings, workers: int, give_up_s: float, log: Path) -> Row:
    """Start the workers, ring every partition once they are alive, time the settling."""
    assert settings.redis_url is not None
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key,
        "SETTLE_VAR_DIR": str(settings.var_dir),
        "SETTLE_REDIS_PREFIX": settings.redis_prefix,
        "SETTLE_SWEEP_AFTER_MS": str(settings.sweep_after_ms),
        "SETTLE_PARTITIONS": str(settings.settle_partitions),
    }
    procs = [start("server.cli", "worker", env=env, log=log) for _ in range(workers)]
    try:
        await wait_crew(settings, workers)
        redis = await create_pool(redis_settings(settings, settings.redis_url))
        dispatch = Dispatcher(redis, settings)
        async with connected(settings) as store:
            n = await pending(store)
            before = _cpu(procs)
            rung = time.time()
            await dispatch.ring(range(settings.settle_partitions))
            await dispatch.close()
            await redis.aclose()
            left = n
            while left and time.time() - rung < give_up_s:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited; see {log}")
                await asyncio.sleep(0.05)
                left = await pending(store)
            used = [b - a for a, b in zip(before, _cpu(procs), strict=True)]
            times = sorted(
                r["settled_at"]
                for r in await store.fetch_all(
                    sa.select(transfers.c.settled_at).where(
                        transfers.c.memo == MEMO, transfers.c.settled_at.is_not(None)
                    )
                )
            )
            report = await audit(store)
            assert report.ok, report.render()
    finally:
        stop(procs)
    quarter, three = times[len(times) // 4], times[3 * len(times) // 4]
    middle = (three - quarter) / 1e6
    rate = (len(times) // 2) / middle if middle > 0 else float("nan")
    settled = max(n - left, 1)
    return Row(
        0,
        workers,
        n,
        times[-1] / 1e6 - rung if times else 0.0,
        rate,
        left,
        worker_us=used[0] * 1e6 / settled,
        pg_us=used[1] * 1e6 / settled,
        proxy_us=used[2] * 1e6 / settled,
        busy=100 * used[3] / used[4] if used[4] else 0.0,
    )


def _cpu(procs: list[subprocess.Popen[bytes]]) -> list[float]:
    """CPU seconds so far: the workers, PostgreSQL, this process; the machine (busy,
    all)."""
    busy, total = machine_cpu()
    return [
        sum(cpu_seconds(p.pid) for p in procs),
        cpu_seconds_named("postgres"),
        time.process_time(),
        busy,
        total,
    ]


@contextlib.asynccontextmanager
async def proxied(server: str, delay_ms: float) -> AsyncIterator[str]:
    """The server's URL, or one through a latency proxy adding ``delay_ms``."""
    if not delay_ms:
        yield server
        return
    url = sa.engine.make_url(server)
    proxy = LatencyProxy((url.host or "127.0.0.1", url.port or 5432), delay_ms)
    port = await proxy.start()
    try:
        yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        await proxy.close()


async def main() -> None:
    default_pg = (
        os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=Settings.settle_partitions)
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--pg", default=default_pg)
    args = parser.parse_args()
    server = args.pg.replace("postgresql+asyncpg://", "postgresql://")
    if not await reachable(server):
        raise SystemExit(f"no PostgreSQL reachable at {server}")
    base = server.rsplit("/", 1)[0]
    name = f"settle_scaleout_{uuid.uuid4().hex[:10]}"
    made = [f"{name}_seed"]
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="settle-scaleout-") as tmp,
        redis_server(Path(tmp)) as redis_url,
    ):
        var = Path(tmp)
        logs = args.log_dir or var
        await pg_admin(server, f'CREATE DATABASE "{made[0]}"')
        try:
            started = time.perf_counter()
            await seed(
                settings_for(f"{base}/{made[0]}", redis_url, var, args.partitions),
                args.transfers,
                args.pairs,
            )
            print(f"seeded {args.transfers} transfers in {time.perf_counter() - started:.0f} s")
            print(header())
            for delay in args.delay_ms:
                for workers in args.workers:
                    made.append(f"{name}_d{int(delay * 10)}_w{workers}")
                    await pg_admin(server, f'CREATE DATABASE "{made[-1]}" TEMPLATE "{made[0]}"')
                    async with proxied(f"{base}/{made[-1]}", delay) as url:
                        settings = settings_for(url, redis_url, var, args.partitions)
                        log = logs / f"d{delay}-w{workers}-workers.log"
                        row = await run(settings, workers, args.timeout, log)
                    row.delay_ms = delay
                    rows.append(row)
                    print(line(row, rows), flush=True)
        finally:
            await pg_admin(server, *(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in made))


def header() -> str:
    return (
        "| added round trip | workers | transfers | ring → last settled | settled/s (middle"
        " half) | vs. 1 worker | CPU µs per transfer: workers / PostgreSQL / proxy |"
        " cores busy |\n|---|---|---|---|---|---|---|---|"
    )


def line(row: Row, rows: list[Row]) -> str:
    one = next((r for r in rows if r.delay_ms == row.delay_ms and r.workers == 1), None)
    ratio = f"x{row.rate / one.rate:.2f}" if one is not None and one.rate else "—"
    left = f" ({row.left} left)" if row.left else ""
    return (
        f"| {row.delay_ms:g} ms | {row.workers} | {row.transfers:,}{left} | {row.seconds:.2f} s"
        f" | {row.rate:,.0f} | {ratio} | {row.worker_us:.0f} / {row.pg_us:.0f} /"
        f" {row.proxy_us:.0f} | {row.busy:.0f}% |"
    )


if __name__ == "__main__":
    asyncio.run(main())
