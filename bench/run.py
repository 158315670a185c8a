"""``make bench``: every figure of the performance targets in one run, each also as a
ratio to the ceiling of a minimal Starlette endpoint served the same way, next to the
Django + Celery reference figures.

Everything starts here, on loopback, in a temporary directory: the bundled redis-server,
SQLite files, ``settle web`` and ``settle worker`` subprocesses (``SETTLE_DELAY_MS=0``)
and the ceiling app (``bench.ceiling``). The load generator (``bench.loadgen``) and the
WebSocket subscribers run in this process, on the same two cores. Writes
``bench/results/latest.json``, ``latest.md`` and ``latency-cdf.png``.

    python -m bench.run [--quick] [--profile] [--skip-cost]

``--quick`` (``make bench-quick``, under a minute) runs shorter, with 1,000 idle sockets
and a 50,000-entry ledger instead of 10,000 and 1,000,000, and writes ``quick.json``,
``quick.md`` and ``quick-latency-cdf.png`` instead. ``--profile`` also samples the web and
worker processes with py-spy during the 500/s run (``results/profile-{web,worker}.svg``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import random
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import uvloop

from bench import loadgen, report, seed, worker_idle
from bench.live import SENDERS, drive, fan_out
from bench.seed import User
from bench.settlement import settle_queued, settle_queued_through
from bench.sockets import close_all, subscribe_many
from bench.stack import (
    REPO,
    SECRET_KEY,
    Stack,
    connected,
    cpu_seconds,
    drain,
    free_port,
    lag_between,
    lag_buckets,
    pending,
    postgres_database,
    redis_server,
    rss_kib,
    running,
    start,
    stop,
    transfer_request,
    wait_http,
)
from bench.stats import summary
from server.store import Store
from server.store.schema import now_us, transfers
from server.web import passwords, sessions

RESULTS = REPO / "bench" / "results"
# Acceptance load: 4 users per client, so that the per-user rate limit (100/s) never binds.
LOAD_USERS = 64
IDLE_ACCOUNTS = 100
# The sweeper would re-enqueue the settlement benchmark's seeded transfers while their
# jobs are still queued aside; the job path is what is measured.
STACK_ENV = {"SETTLE_SWEEP_AFTER_MS": "3600000"}


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    seconds: float  # each timed load
    warmup_s: float
    idle: int  # idle WebSocket connections
    fanout_events: int
    settle: int  # queued transfers one worker settles
    history: int  # completed transfers in the large database (two ledger entries each)
    history_users: int
    page_requests: int
    settle_pg: int  # queued transfers one worker settles, PostgreSQL
    clients: int = 16
    # The window is measured at this share of the acceptance capacity just measured,
    # and at a quiet rate (transfers/s).
    load_share: float = 0.5
    quiet_rate: int = 20
    fanout: int = 1000
    # The minimal endpoint's latency at a fixed rate, which latencies are compared with.
    ceiling_rate: int = 500
    # The window at these fixed rates too (``--also-at``: to compare with a run of
    # another version, on the same machine, at the same rates).
    also_at: tuple[float, ...] = ()


FULL = Plan("full", 10, 2, 10_000, 5, 20_000, 500_000, 1000, 200, 10_000)
QUICK = Plan("quick", 3, 1, 1_000, 3, 5_000, 25_000, 200, 50, 2_000)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def ceiling(var: Path, plan: Plan) -> dict[str, Any]:
    """The minimal app: 16 clients closed loop, the plan's rate open loop, idle socket memory."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "SECRET_KEY": SECRET_KEY}
    env["SETTLE_VAR_DIR"] = str(var)
    log_path = var / "ceiling.log"
    proc = start("bench.ceiling", env=env, log=log_path)
    try:
        wait_http(port, proc, "/readyz", log_path)
        host = f"127.0.0.1:{port}"

        def make(c: int, i: int) -> bytes:
            return transfer_request(host, "stl_ceiling", "acc_a", "acc_b", f"c{c}-{i}")

        closed = await loadgen.closed_loop(
            "127.0.0.1", port, plan.clients, plan.seconds, make, plan.warmup_s
        )
        log(f"ceiling: {closed.rate:,.0f} req/s at {plan.clients} clients")
        pool = loadgen.Pool("127.0.0.1", port)
        await pool.warm(16)
        at_rate: list[float] = []

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            await pool.send(make(0, i))
            at_rate.append((time.perf_counter() - t0) * 1000)

        await loadgen.at_rate(plan.ceiling_rate, plan.seconds, one)
        pool.close()
        idle = await idle_memory(f"http://{host}", proc.pid, plan.idle, [("acc_a", "stl_x")])
        log(f"ceiling: {idle['bytes_per_connection'] / 1000:.1f} KB per idle WebSocket")
        return {
            "closed": closed.to_json(),
            "at_rate": summary(at_rate),
            "idle": idle,
            "samples": {"at_rate": at_rate},
        }
    finally:
        stop([proc])


async def idle_memory(
    url: str, pid: int, n: int, who: Sequence[tuple[str, str]]
) -> dict[str, float]:
    """Open n WebSockets and leave them idle; the server's RSS growth per connection."""
    before = rss_kib(pid)
    started = time.perf_counter()
    socks = await subscribe_many(url, who, n)
    connect_s = time.perf_counter() - started
    await asyncio.sleep(2)
    after = rss_kib(pid)
    await close_all(socks)
    return {
        "connections": n,
        "connect_s": connect_s,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": (after - before) * 1024 / n,
    }


async def accept_load(stack: Stack, users: Sequence[User], plan: Plan) -> loadgen.Run:
    """``plan.clients`` clients, each sending transfers from its own 4 users to others."""
    per = len(users) // plan.clients
    run = secrets.token_hex(4)

    def make(c: int, i: int) -> bytes:
        k = c * per + i % per
        src, dst = users[k], users[(k + 1 + i * 7 % (len(users) - 1)) % len(users)]
        return transfer_request(stack.host, src.token, src.account, dst.account, f"{run}-{c}-{i}")

    return await loadgen.closed_loop(
        "127.0.0.1", stack.settings.port, plan.clients, plan.seconds, make, plan.warmup_s
    )


async def window(
    stack: Stack, live: Sequence[User], rate: float, seconds: float, label: str
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Transfers started at ``rate``/s for ``seconds``: POST start → 202, →
    ``transfer.pending`` and → ``transfer.completed`` at the sender's subscriber."""
    lat = await drive(stack, live[:SENDERS], live[SENDERS], rate, seconds)
    out: dict[str, Any] = {
        "rate": rate,
        "failed": lat.failed,
        "unheard": lat.unheard,
        "accepted": summary(lat.accepted),
        "pending": summary(lat.pending),
        "completed": summary(lat.completed),
    }
    log(
        f"{label}live at {rate:,.0f}/s: pending p99 {out['pending']['p99']:.1f} ms,"
        f" completed p50 {out['completed']['p50']:.1f} / p99 {out['completed']['p99']:.1f} ms"
        + (f"; {lat.unheard} completions never heard (left out)" if lat.unheard else "")
    )
    samples = {"accepted": lat.accepted, "pending": lat.pending, "completed": lat.completed}
    return out, samples


async def transfer_count(store: Store) -> int:
    return int(await store.fetch_val(sa.select(sa.func.count()).select_from(transfers)))


async def page_times(stack: Stack, store: Store, user: User, n: int) -> dict[str, Any]:
    """Sequential GETs, one at a time: the account page (HTML, logged-in session), the
    account as JSON and its first page of history as JSON."""
    token, _ = await sessions.create(store, stack.settings, user.id)
    bearer = {"Authorization": f"Bearer {user.token}"}
    requests = {
        "page": loadgen.request(
            "GET",
            f"/accounts/{user.account}",
            stack.host,
            {"Cookie": f"{sessions.COOKIE}={token}", "Accept": "text/html"},
        ),
        "api_account": loadgen.request("GET", f"/api/accounts/{user.account}", stack.host, bearer),
        "api_history": loadgen.request(
            "GET", f"/api/accounts/{user.account}/transfers?limit=50", stack.host, bearer
        ),
    }
    conn = await loadgen.Connection.open("127.0.0.1", stack.settings.port)
    out: dict[str, Any] = {}
    try:
        for raw in requests.values():
            await conn.send(raw)  # warm-up: the first request of each kind is not timed
        lag_before = lag_buckets(stack.settings.port)
        for name, raw in requests.items():
            ms = []
            for _ in range(n):
                t0 = time.perf_counter()
                status, body = await conn.send(raw)
                ms.append((time.perf_counter() - t0) * 1000)
                assert status == 200 and user.account.encode() in body, (name, status)
            out[name] = summary(ms)
    finally:
        conn.close()
    # What those reads cost everyone else: how late the web process's loop woke timers.
    out["loop_lag"] = lag_between(lag_before, lag_buckets(stack.settings.port))
    return out


def peak_rss_reset(pid: int) -> int:
    """Reset a process's peak resident set size (VmHWM) to its current size; that size,
    in KiB. (Linux: ``clear_refs`` 5.)"""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return rss_kib(pid)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def statement_times(
    stack: Stack, user: User, since_us: int, runs: int, balance_requests: int
) -> dict[str, Any]:
    """The account's whole statement (every entry since ``since_us``), JSON and CSV,
    ``runs`` times each: time to the last byte, and how far the web process's peak
    memory rose above its size before the request. Then ``balance_requests`` sequential
    balance-at requests for random instants within the same range."""
    import httpx

    pid = stack.pid("web")
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since_us // 1_000_000 - 1))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    bearer = {"Authorization": f"Bearer {user.token}"}
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=stack.url, headers=bearer, timeout=120) as client:
        lag_before = lag_buckets(stack.settings.port)
        for fmt in ("json", "csv"):
            ms, growth, size = [], [], 0
            for _ in range(runs):
                before = peak_rss_reset(pid)
                t0 = time.perf_counter()
                size = 0
                params = {"from": start, "to": end, "format": fmt}
                async with client.stream(
                    "GET", f"/api/accounts/{user.account}/statement", params=params
                ) as r:
                    assert r.status_code == 200, r.status_code
                    async for chunk in r.aiter_raw():
                        size += len(chunk)
                ms.append((time.perf_counter() - t0) * 1000)
                growth.append(peak_rss_kib(pid) - before)
            out[fmt] = {**summary(ms), "bytes": size, "peak_rss_growth_kib": max(growth)}
        out["loop_lag"] = lag_between(lag_before, lag_buckets(stack.settings.port))
        r = await client.get(
            f"/api/accounts/{user.account}/statement", params={"from": start, "to": end}
        )
        out["entries"] = len(r.json()["entries"])
    raw_requests = []
    rng = random.Random(5)
    for _ in range(balance_requests):
        at_us = rng.randint(since_us, now_us())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_us // 1_000_000))
        at = f"{stamp}.{at_us % 1_000_000:06d}Z"
        raw_requests.append(
            loadgen.request(
                "GET", f"/api/accounts/{user.account}/balance?at={at}", stack.host, bearer
            )
        )
    conn = await loadgen.Connection.open("127.0.0.1", stack.settings.port)
    try:
        await conn.send(raw_requests[0])  # warm-up
        ms = []
        for raw in raw_requests:
            t0 = time.perf_counter()
            status, body = await conn.send(raw)
            ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200 and b'"posted"' in body, (status, body[:200])
    finally:
        conn.close()
    out["balance_at"] = summary(ms)
    return out


def audit(stack_env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "audit"],
        env=stack_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return {"ok": done.returncode == 0, "seconds": time.perf_counter() - started}


@contextlib.contextmanager
def profiled(stack: Stack, seconds: float, enabled: bool) -> Iterator[None]:
    """py-spy flame graphs of the web and worker processes while the block runs."""
    if not enabled:
        yield
        return
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(stack.pid(name)),
                "--duration",
                str(int(seconds)),
                "--rate",
                "250",
                "--output",
                str(RESULTS / f"profile-{name}.svg"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("web", "worker")
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.wait(60)


async def main_stack(var: Path, redis_url: str, plan: Plan, profile: bool) -> dict[str, Any]:
    """An almost empty database: idle sockets, acceptance, live latency, fan-out,
    settlement, pages; then the audit."""
    db = var / "settle.db"
    seed.create(db)
    seeder = seed.Seeder(db)
    load = seeder.users(LOAD_USERS, "load")
    live = seeder.users(SENDERS + 1, "live")
    fan = seeder.users(2, "fan")
    idle_users = seeder.users(IDLE_ACCOUNTS, "idle")
    seeder.close()
    out: dict[str, Any] = {}
    with running(var, redis_url, db, "main", extra=STACK_ENV) as stack:
        async with connected(stack.settings) as store:
            # First, while the process has not yet grown (and kept) memory for other work.
            who = [(u.account, u.token) for u in idle_users]
            out["idle"] = await idle_memory(stack.url, stack.pid("web"), plan.idle, who)
            log(f"idle sockets: {out['idle']['bytes_per_connection'] / 1000:.1f} KB each")
            created, cpu = await transfer_count(store), cpu_seconds(stack.pid("web"))
            run = await accept_load(stack, load, plan)
            cpu, created = (
                cpu_seconds(stack.pid("web")) - cpu,
                await transfer_count(store) - created,
            )
            out["acceptance"] = {
                **run.to_json(),
                "pending_after": await pending(store),
                "web_cpu_ms_per_transfer": cpu * 1000 / max(created, 1),
            }
            out["acceptance"]["drain_s"] = await drain(stack, store)
            log(
                f"acceptance: {run.rate:,.0f}/s, p99 {out['acceptance']['p99']:.1f} ms,"
                f" web CPU {out['acceptance']['web_cpu_ms_per_transfer']:.2f} ms a transfer"
            )
            half = run.rate * plan.load_share
            with profiled(stack, plan.seconds, profile):
                out["live"], out["samples"] = await window(stack, live, half, plan.seconds, "")
            out["live_quiet"], _ = await window(stack, live, plan.quiet_rate, plan.seconds, "")
            out["live_at"] = [
                (await window(stack, live, rate, plan.seconds, ""))[0] for rate in plan.also_at
            ]
            ms = await fan_out(stack, fan[0], fan[1], plan.fanout, plan.fanout_events)
            out["fanout"] = {
                "subscribers": plan.fanout,
                "events": plan.fanout_events,
                **summary(ms),
            }
            out["samples"]["fanout"] = ms
            log(f"fan-out to {plan.fanout}: p99 {out['fanout']['p99']:.1f} ms")
            await drain(stack, store)
            out["settlement"] = await settle_queued(
                stack, store, [u.account for u in load], plan.settle
            )
            log(f"settlement: {out['settlement']['rate']:,.0f}/s")
            out["pages"] = await page_times(stack, store, load[0], plan.page_requests)
        out["audit"] = audit(stack.env)
    return out


async def pg_stack(var: Path, redis_url: str, plan: Plan, server: str) -> dict[str, Any] | None:
    """The same acceptance, window and settlement on PostgreSQL, when one answers at
    ``server`` (a database of our own, dropped after); None when none does."""
    async with postgres_database(server) as url:
        if url is None:
            log(f"no PostgreSQL at {server}: its figures are skipped")
            return None
        out: dict[str, Any] = {}
        with running(var, redis_url, url, "pg", extra=STACK_ENV) as stack:
            async with connected(stack.settings) as store:
                load = await seed.users_through(store, LOAD_USERS, "pgload")
                live = await seed.users_through(store, SENDERS + 1, "pglive")
                created, cpu = await transfer_count(store), cpu_seconds(stack.pid("web"))
                run = await accept_load(stack, load, plan)
                cpu, created = (
                    cpu_seconds(stack.pid("web")) - cpu,
                    await transfer_count(store) - created,
                )
                out["acceptance"] = {
                    **run.to_json(),
                    "web_cpu_ms_per_transfer": cpu * 1000 / max(created, 1),
                }
                await drain(stack, store)
                log(
                    f"PostgreSQL: acceptance {run.rate:,.0f}/s, p99"
                    f" {out['acceptance']['p99']:.1f} ms, web CPU"
                    f" {out['acceptance']['web_cpu_ms_per_transfer']:.2f} ms a transfer"
                )
                half = run.rate * plan.load_share
                out["live"], _ = await window(stack, live, half, plan.seconds, "PostgreSQL: ")
                out["live_quiet"], _ = await window(
                    stack, live, plan.quiet_rate, plan.seconds, "PostgreSQL: "
                )
                out["live_at"] = [
                    (await window(stack, live, rate, plan.seconds, "PostgreSQL: "))[0]
                    for rate in plan.also_at
                ]
                await drain(stack, store)
                out["settlement"] = await settle_queued_through(
                    stack, store, [u.account for u in load], plan.settle_pg
                )
                log(f"PostgreSQL: settlement {out['settlement']['rate']:,.0f}/s")
            out["audit"] = audit(stack.env)
        return out


async def cost_stack(var: Path, redis_url: str, plan: Plan) -> dict[str, Any]:
    """A large database (plan.history completed transfers, two ledger entries each, a
    tenth of them into one "merchant" account): acceptance, settlement and pages again."""
    db = var / "large.db"
    seed.create(db)
    started = time.perf_counter()
    seeder = seed.Seeder(db)
    users = seeder.users(plan.history_users, "hist")
    (merchant,) = seeder.users(1, "merchant")
    accounts = [u.account for u in users] + [merchant.account]
    seeded_from = now_us() - plan.history  # seed.history dates its transfers from here
    seeder.history(plan.history, accounts, hot=merchant.account, hot_share=0.1)
    seeder.close()
    out: dict[str, Any] = {"seed_s": time.perf_counter() - started}
    with sqlite3.connect(db) as conn:
        for table in ("ledger_entries", "transfers", "account_events"):
            out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    log(f"large database: {out['ledger_entries']:,} ledger entries in {out['seed_s']:.0f} s")
    load = users[:LOAD_USERS]
    with running(var, redis_url, db, "large", extra=STACK_ENV) as stack:
        out["audit_seeded"] = audit(stack.env)
        log(f"audit of the seeded database: ok={out['audit_seeded']['ok']}")
        async with connected(stack.settings) as store:
            run = await accept_load(stack, load, plan)
            out["acceptance"] = run.to_json()
            out["acceptance"]["drain_s"] = await drain(stack, store)
            log(f"large: acceptance {run.rate:,.0f}/s")
            out["settlement"] = await settle_queued(
                stack, store, [u.account for u in load], plan.settle
            )
            log(f"large: settlement {out['settlement']['rate']:,.0f}/s")
            out["pages"] = await page_times(stack, store, users[1], plan.page_requests)
            out["pages_merchant"] = await page_times(stack, store, merchant, plan.page_requests)
            out["statement"] = await statement_times(
                stack, merchant, seeded_from, 3, plan.page_requests
            )
            log(
                f"large: statement of {out['statement']['entries']:,} entries"
                f" {out['statement']['json']['p50']:.0f} ms"
                f" (+{out['statement']['json']['peak_rss_growth_kib'] / 1024:.1f} MiB peak);"
                f" balance-at p99 {out['statement']['balance_at']['p99']:.1f} ms"
            )
            mine = sa.or_(
                transfers.c.from_account == merchant.account,
                transfers.c.to_account == merchant.account,
            )
            count = await store.fetch_val(sa.select(sa.func.count()).where(mine))
            out["merchant_transfers"] = int(count)
    return out


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain")),
        "loadavg_start": os.getloadavg()[0],
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="under a minute, at smaller scale")
    p.add_argument("--profile", action="store_true", help="py-spy the live run at the plan's rate")
    p.add_argument("--skip-cost", action="store_true", help="no large-database figures")
    p.add_argument(
        "--pg",
        default=os.environ.get("TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server for its figures (skipped when none answers)",
    )
    p.add_argument(
        "--also-at",
        type=float,
        nargs="+",
        default=[],
        metavar="RATE",
        help="measure the window at these transfers/s too",
    )
    args = p.parse_args()
    plan = dataclasses.replace(QUICK if args.quick else FULL, also_at=tuple(args.also_at))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Each side of the idle sockets (this process, the web process) holds one per socket.
    if hard < plan.idle + 1000:
        sys.exit(f"{plan.idle:,} idle sockets need `ulimit -n` of {plan.idle + 1000}+")
    # Users are seeded with a real (slow) password hash once; nobody logs in by password.
    passwords.set_cost(2**10)
    RESULTS.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "plan": dataclasses.asdict(plan),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp,
        redis_server(Path(tmp)) as redis_url,
    ):
        var = Path(tmp)
        log(f"{plan.name} run in {var}")
        results["ceiling"] = await ceiling(var, plan)
        results["settle"] = await main_stack(var, redis_url, plan, args.profile)
        on_pg = await pg_stack(var, redis_url, plan, args.pg)
        if on_pg is not None:
            results["postgresql"] = on_pg
        if not args.skip_cost:
            results["large"] = await cost_stack(var, redis_url, plan)
        log("idle worker: CPU with nothing to do, then pickup of jobs enqueued one by one")
        results["worker_idle"] = await worker_idle.measure(
            var, redis_url, 5 if args.quick else 10, 100 if args.quick else 200
        )
    results["wall_s"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    samples = {
        "ceiling": results["ceiling"].pop("samples"),
        "settle": results["settle"].pop("samples"),
    }
    results["figures"] = report.figures(results)
    # A quick run never overwrites the full run's results, which bench/README.md shows.
    name, plot = ("quick", "quick-latency-cdf.png") if args.quick else ("latest", "latency-cdf.png")
    (RESULTS / f"{name}.json").write_bytes(
        orjson.dumps({**results, "samples": samples}, option=orjson.OPT_INDENT_2)
    )
    (RESULTS / f"{name}.md").write_text(report.markdown(results))
    report.plot(samples, results, RESULTS / plot)
    print()
    print(report.markdown(results))
    log(f"done in {results['wall_s']:.0f} s; bench/results/{name}.{{json,md}}, {plot}")


if __name__ == "__main__":
    uvloop.run(main())
