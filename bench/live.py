"""Live-stream latency benchmark (``make bench-live``); not part of the test suite.

Starts its own stack (bundled redis-server, a temporary SQLite file, ``settle web`` and
``settle worker`` subprocesses on loopback), drives transfers at a fixed rate, and
prints, per transfer, POST start -> ``transfer.pending`` / ``transfer.completed`` at the
sender's subscriber, then the delivery latency of single events to many subscribers of
one account.

    python bench/live.py [--rate 200] [--seconds 10] [--fanout 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from server import auth, ledger
from server.db import Store, create_schema
from server.redisbox import start_redis_server, stop_redis_server
from server.settings import Settings

SENDERS = 10


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def report(name: str, ms: list[float]) -> None:
    print(f"{name:<44} n={len(ms):<6} p50={pct(ms, 50):7.2f} ms  p99={pct(ms, 99):7.2f} ms")


async def make_users(settings: Settings, n: int) -> list[tuple[str, str]]:
    """(account, token) for n users, made directly in the database before the server starts."""
    auth.set_cost(2**10)
    store = Store(settings)
    await store.connect()
    await create_schema(store)
    users = []
    for i in range(n):
        user_id, account = await ledger.create_user(store, f"bench{i}", auth.hash_password("x"))
        await ledger.deposit(store, account, 10**11)
        users.append((account, await auth.issue_token(store, user_id, 3600)))
    await store.disconnect()
    return users


@contextlib.contextmanager
def stack(var: Path, env: dict[str, str], port: int) -> Iterator[str]:
    procs = [
        subprocess.Popen([sys.executable, "-m", "server.cli", cmd], env=env, cwd=var)
        for cmd in ("web", "worker")
    ]
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


async def listen(ws: ClientConnection, seen: dict[tuple[str, str], float]) -> None:
    with contextlib.suppress(Exception):
        async for raw in ws:
            message = orjson.loads(raw)
            if message["type"].startswith("transfer."):
                seen.setdefault((message["transfer"]["id"], message["type"]), time.perf_counter())


async def wait_until(done: Callable[[], bool], limit_s: float) -> None:
    """Poll a counter (a bench may; tests wait on events instead)."""
    deadline = time.perf_counter() + limit_s
    while True:
        if done() or time.perf_counter() > deadline:
            return
        await asyncio.sleep(0.005)


def ws_url(url: str, account: str) -> str:
    return url.replace("http", "ws", 1) + f"/ws?account={account}"


async def drive(url: str, users: list[tuple[str, str]], rate: int, seconds: float) -> None:
    senders, sink = users[:SENDERS], users[SENDERS]
    seen: dict[tuple[str, str], float] = {}
    socks = [
        await connect(ws_url(url, acc), additional_headers={"Authorization": f"Bearer {tok}"})
        for acc, tok in senders
    ]
    tasks = [asyncio.create_task(listen(ws, seen)) for ws in socks]
    started: dict[str, float] = {}
    failed: list[int] = []
    accepted_ms: list[float] = []
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(i: int) -> None:
            acc, tok = senders[i % SENDERS]
            body = {"from_account": acc, "to_account": sink[0], "amount": "0.01"}
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    "/api/transfers", json=body, headers={"Authorization": f"Bearer {tok}"}
                )
            except httpx.HTTPError:
                failed.append(i)
                return
            if r.status_code == 202:
                started[r.json()["id"]] = t0
                accepted_ms.append((time.perf_counter() - t0) * 1000)
            else:
                failed.append(i)

        posts = []
        begin = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
            posts.append(asyncio.create_task(one(i)))
        await asyncio.gather(*posts)
        await wait_until(lambda: all((t, "transfer.completed") in seen for t in started), 30)
    print(f"{len(started)} transfers accepted, {len(failed)} failed")
    report(f"POST start -> 202 response ({rate}/s)", accepted_ms)
    for kind in ("transfer.pending", "transfer.completed"):
        ms = [(seen[(t, kind)] - t0) * 1000 for t, t0 in started.items() if (t, kind) in seen]
        report(f"POST start -> {kind} at sender ({rate}/s)", ms)
    for task in tasks:
        task.cancel()
    for ws in socks:
        await ws.close()


async def fan_out(url: str, users: list[tuple[str, str]], n: int, events: int) -> None:
    sender, (acc, tok) = users[0], users[SENDERS + 1]
    headers = {"Authorization": f"Bearer {tok}"}
    socks = await asyncio.gather(
        *(connect(ws_url(url, acc), additional_headers=headers) for _ in range(n))
    )
    seen: list[dict[tuple[str, str], float]] = [{} for _ in socks]
    tasks = [asyncio.create_task(listen(ws, s)) for ws, s in zip(socks, seen, strict=True)]
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(events):
            body = {"from_account": sender[0], "to_account": acc, "amount": "0.01"}
            t0 = time.perf_counter()
            r = await client.post(
                "/api/transfers", json=body, headers={"Authorization": f"Bearer {sender[1]}"}
            )
            key = (r.json()["id"], "transfer.pending")
            await wait_until(lambda k=key: all(k in s for s in seen), 10)  # type: ignore[misc]
            lat += [(s[key] - t0) * 1000 for s in seen if key in s]
            await asyncio.sleep(0.2)
    report(f"POST start -> pending at each of {n} subscribers", lat)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--fanout", type=int, default=1000)
    p.add_argument("--fanout-events", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp:
        var = Path(tmp)
        redis = start_redis_server(var, var / "redis.sock", appendonly=False)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = {
                **os.environ,
                "DATABASE_URL": f"sqlite:///{var / 'settle.db'}",
                "REDIS_URL": f"unix://{var / 'redis.sock'}",
                "SECRET_KEY": "bench",
                "SETTLE_VAR_DIR": str(var),
                "PORT": str(port),
                "SETTLE_WS_QUEUE_SIZE": "10000",
            }
            settings = Settings.from_env(env)
            users = asyncio.run(make_users(settings, SENDERS + 2))
            with stack(var, env, port) as url:
                asyncio.run(drive(url, users, args.rate, args.seconds))
                asyncio.run(fan_out(url, users, args.fanout, args.fanout_events))
        finally:
            stop_redis_server(redis)


if __name__ == "__main__":
    main()
