"""settle on loopback for benchmarks: the bundled redis-server, a SQLite file in a
temporary directory, and ``settle web`` / ``settle worker`` as subprocesses, each with the
settings a deployment would have (one uvicorn process, ``SETTLE_DELAY_MS=0``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import orjson
import redis
import sqlalchemy as sa
from redis.asyncio import Redis as AsyncRedis

from bench import loadgen
from server.redisbox import start_redis_server, stop_redis_server
from server.settings import Settings
from server.store import Store, open_store
from server.store.schema import transfers

REPO = Path(__file__).resolve().parent.parent
SECRET_KEY = "bench-secret-key"  # noqa: S105 (a throwaway deployment on loopback)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(var: Path) -> Iterator[str]:
    """The bundled redis-server (no persistence) in ``var``; yields its unix:// URL."""
    proc = start_redis_server(var, var / "redis.sock", appendonly=False)
    try:
        yield f"unix://{var / 'redis.sock'}"
    finally:
        stop_redis_server(proc)


def settle_env(
    var: Path, redis_url: str, database: Path | str, port: int, prefix: str, **extra: str
) -> dict[str, str]:
    """A deployment's environment; ``database`` a SQLite file, or a PostgreSQL URL."""
    return {
        **os.environ,
        "DATABASE_URL": database if isinstance(database, str) else f"sqlite:///{database}",
        "REDIS_URL": redis_url,
        "SECRET_KEY": SECRET_KEY,
        "SETTLE_VAR_DIR": str(var),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "SETTLE_DELAY_MS": "0",
        "SETTLE_REDIS_PREFIX": prefix,
        **extra,
    }


def start(module: str, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m module args...`` from the repository, its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(port: int, proc: subprocess.Popen[bytes], path: str, log: Path) -> None:
    """Until GET ``path`` answers 200 (the process exiting first is an error)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited; see {log}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not answer on port {port}; see {log}")


def lag_buckets(port: int) -> dict[float, float]:
    """The web process's event-loop lag histogram (``/metrics``): cumulative sample
    counts by upper bound in seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("settle_event_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def lag_between(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Loop-lag samples taken between two ``lag_buckets`` readings: how many, how many
    over 5 ms, and the bound of the highest bucket any fell in (the max, to a bucket)."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)
    within_5ms = delta.get(0.005, 0.0)
    highest = min((le for le, n in delta.items() if n >= total), default=float("inf"))
    p999 = min((le for le, n in delta.items() if n >= 0.999 * total), default=float("inf"))
    return {
        "samples": total,
        "over_5ms": total - within_5ms,
        "max_bound_s": highest,
        "p999_bound_s": p999,
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_named(name: str) -> float:
    """User plus system CPU time used so far by every process called ``name`` (its
    ``comm``: "postgres" for each PostgreSQL backend), those that ended uncounted."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        if comm == name:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores together."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def wait_worker(settings: Settings, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the arq worker has polled its queue once (it then writes its health key)."""
    client = redis.Redis.from_url(settings.redis_url or "")
    deadline = time.monotonic() + 60
    try:
        while not client.exists(f"{settings.queue_name}:health-check"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.05)
    finally:
        client.close()


@dataclasses.dataclass
class Stack:
    """A running deployment: its settings, environment and processes."""

    var: Path
    settings: Settings
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def database(self) -> Path:
        return Path(self.settings.database_url.removeprefix("sqlite:///"))

    def pid(self, name: str) -> int:
        return self.procs[name].pid


@contextlib.contextmanager
def running(
    var: Path,
    redis_url: str,
    database: Path | str,
    name: str,
    worker: bool = True,
    extra: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """``settle web`` (and ``settle worker``) on ``database``, ready to serve; stopped after.

    Each stack has its own Redis key prefix, so stacks can share one redis-server."""
    env = settle_env(var, redis_url, database, free_port(), f"bench-{name}", **(extra or {}))
    settings = Settings.from_env(env)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        log = var / f"{name}-web.log"
        procs["web"] = start("server.cli", "web", env=env, log=log)
        wait_http(settings.port, procs["web"], "/readyz", log)
        if worker:
            log = var / f"{name}-worker.log"
            procs["worker"] = start("server.cli", "worker", env=env, log=log)
            wait_worker(settings, procs["worker"], log)
        yield Stack(var, settings, env, procs)
    finally:
        stop(procs.values())


def transfer_request(host: str, token: str, src: str, dst: str, key: str) -> bytes:
    """POST /api/transfers of 0.01 from ``src`` to ``dst``, with an Idempotency-Key."""
    body = orjson.dumps({"from_account": src, "to_account": dst, "amount": "0.01"})
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    return loadgen.request("POST", "/api/transfers", host, headers, body)


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Store]:
    store = open_store(settings)
    await store.connect()
    try:
        yield store
    finally:
        await store.disconnect()


async def pending(store: Store) -> int:
    """How many transfers are pending."""
    count = await store.fetch_val(sa.select(sa.func.count()).where(transfers.c.status == "pending"))
    return int(count)


async def drain(stack: Stack, store: Store, limit_s: float = 300) -> float:
    """Until nothing is pending; how long that took."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s and await pending(store):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def wait_crew(settings: Settings, workers: int, limit_s: float = 60) -> None:
    """Until ``workers`` worker processes say they are alive (``jobs.drainer.Crew``)."""
    client = AsyncRedis.from_url(settings.redis_url or "")
    started = time.perf_counter()
    try:
        while await client.hlen(f"{settings.redis_prefix}:workers") < workers:
            if time.perf_counter() - started > limit_s:
                raise RuntimeError(f"{workers} workers did not start in {limit_s} s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def rss_kib(pid: int) -> int:
    """A process's resident set size (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.asynccontextmanager
async def postgres_database(server: str) -> AsyncIterator[str | None]:
    """A database of our own on the PostgreSQL ``server`` (created, and dropped after);
    its URL, or None when no server answers there."""
    import asyncpg

    server = server.replace("postgresql+asyncpg://", "postgresql://")
    name = f"settle_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(server, timeout=3)
    except (OSError, asyncpg.PostgresError):
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.rsplit("/", 1)[0] + "/" + name
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
