"""Webhooks: how soon a healthy receiver gets an event after its commit, and whether a
slow receiver slows settlement.

Starts its own redis-server, a SQLite database, `settle web` and `settle worker`
(which runs the webhook deliveries on their own queue) on loopback, and receivers in
this process (uvicorn on 127.0.0.1):

1. commit → delivery: transfers at RATE/s from a user whose endpoint answers at once;
   for each delivered event, its arrival time minus its commit time (the transfer's
   ``created_at`` for ``transfer.pending``, ``settled_at`` for ``transfer.completed``,
   both stamped by settle at the commit, to the millisecond).
2. settlement with and without a slow receiver: runs of RATE/s transfers for SECONDS,
   alternating (interleaved) between no endpoint and an endpoint of the sender whose
   receiver answers after 10 s (so every attempt times out at SETTLE_WEBHOOK_TIMEOUT_S);
   each run's p99 of ``settled_in_ms`` (acceptance → settlement, stamped by settle).

    python -m bench.webhooks [--rate 100] [--seconds 5] [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.loadgen import at_rate
from bench.stack import redis_server, running
from bench.stats import pct, summary

HOOKS_ENV = {
    "SETTLE_WEBHOOK_ALLOW_HTTP": "1",
    "SETTLE_WEBHOOK_ALLOW_PRIVATE": "1",
    "SETTLE_TRANSFER_RATE": "0",
}


@contextlib.asynccontextmanager
async def receiver(
    delay_s: float, arrivals: list[tuple[float, bytes]], changed: asyncio.Event | None = None
) -> AsyncIterator[str]:
    """A receiver on loopback answering 204 after ``delay_s``; yields its URL."""

    async def hook(request: Request) -> Response:
        body = await request.body()
        arrivals.append((time.time(), body))
        if changed is not None:
            changed.set()
        if delay_s:
            await asyncio.sleep(delay_s)
        return Response(status_code=204)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task


def committed_at(event: dict[str, Any]) -> float:
    t = event["transfer"]
    at = t["settled_at"] if event["type"] != "transfer.pending" else t["created_at"]
    return datetime.fromisoformat(at).timestamp()


async def login(c: httpx.AsyncClient, name: str) -> tuple[dict[str, str], str]:
    r = await c.post("/api/tokens", json={"username": name, "password": "settle-demo"})
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    account = (await c.get("/api/accounts", headers=headers)).json()["accounts"][0]["id"]
    return headers, account


async def send(
    c: httpx.AsyncClient, who: tuple[dict[str, str], str], to: str, rate: float, seconds: float
) -> list[str]:
    ids: list[str] = []

    async def fire(i: int) -> None:
        body = {"from_account": who[1], "to_account": to, "amount": "0.01"}
        r = await c.post("/api/transfers", json=body, headers=who[0])
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    await at_rate(rate, seconds, fire)
    return ids


async def settled_ms(
    c: httpx.AsyncClient, who: tuple[dict[str, str], str], ids: list[str]
) -> list[float]:
    out = []
    for tid in ids:
        while True:
            t = (await c.get(f"/api/transfers/{tid}", headers=who[0])).json()
            if t["status"] != "pending":
                out.append(float(t["settled_in_ms"]))
                break
            await asyncio.sleep(0.05)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        var = Path(tmp)
        with running(var, redis_url, var / "settle.db", "hooks", extra=HOOKS_ENV) as stack:
            subprocess.run(
                [sys.executable, "-m", "server.cli", "demo"],
                env=stack.env,
                check=True,
                capture_output=True,
            )
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as c:
                alice, bob, carol = [await login(c, n) for n in ("alice", "bob", "carol")]
                await deliveries(c, alice, bob[1], args)
                await slow_receiver(c, carol, bob[1], args)


async def deliveries(
    c: httpx.AsyncClient, alice: tuple[dict[str, str], str], to: str, args: argparse.Namespace
) -> None:
    arrivals: list[tuple[float, bytes]] = []
    changed = asyncio.Event()
    async with receiver(0, arrivals, changed) as url:
        r = await c.post("/api/webhooks", json={"url": url}, headers=alice[0])
        assert r.status_code == 201, r.text
        ids = await send(c, alice, to, args.rate, args.seconds)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(120):
                while len(arrivals) < 2 * len(ids):
                    changed.clear()
                    await changed.wait()
        await c.delete(f"/api/webhooks/{r.json()['id']}", headers=alice[0])
    lags = [(at - committed_at(orjson.loads(body))) * 1000 for at, body in arrivals]
    s = summary(lags)
    print(
        f"commit -> delivery, healthy receiver, {args.rate:g}/s for {args.seconds:g} s:"
        f" {s['n']} of {2 * len(ids)} events, p50 {s['p50']:.1f} ms, p90 {s['p90']:.1f} ms,"
        f" p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms"
    )


async def slow_receiver(
    c: httpx.AsyncClient, sender: tuple[dict[str, str], str], to: str, args: argparse.Namespace
) -> None:
    arrivals: list[tuple[float, bytes]] = []
    p99: dict[str, list[float]] = {"without": [], "with": []}
    async with receiver(10, arrivals) as url:
        for _ in range(args.pairs):
            for kind in ("without", "with"):
                hook = None
                if kind == "with":
                    r = await c.post("/api/webhooks", json={"url": url}, headers=sender[0])
                    assert r.status_code == 201, r.text
                    hook = r.json()["id"]
                ids = await send(c, sender, to, args.rate, args.seconds)
                ms = await settled_ms(c, sender, ids)
                p99[kind].append(pct(ms, 99))
                print(
                    f"  run {kind:7s} slow receiver: completed p99 {pct(ms, 99):.1f} ms,"
                    f" p50 {pct(ms, 50):.1f} ms ({len(ms)} transfers)"
                )
                if hook is not None:
                    await c.delete(f"/api/webhooks/{hook}", headers=sender[0])
    a, b = pct(p99["without"], 50), pct(p99["with"], 50)
    print(
        f"settlement completed p99, median of {args.pairs} interleaved runs each:"
        f" without a slow receiver {a:.1f} ms, with one (10 s answers) {b:.1f} ms"
        f" ({(b - a) / a * 100:+.0f}%); the slow receiver got {len(arrivals)} requests"
    )


if __name__ == "__main__":
    asyncio.run(main())
