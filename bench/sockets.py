"""WebSocket subscribers for benchmarks: connect many, note when each event arrives."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import orjson
from websockets.asyncio.client import ClientConnection, connect

# (transfer id, event type) -> when it arrived (time.perf_counter()).
Seen = dict[tuple[str, str], float]


def ws_url(url: str, account: str) -> str:
    return url.replace("http", "ws", 1) + f"/ws?account={account}"


async def subscribe(url: str, account: str, token: str) -> ClientConnection:
    """A subscriber of ``account`` (with client defaults, as browsers: compression offered)."""
    headers = {"Authorization": f"Bearer {token}"}
    return await connect(
        ws_url(url, account), additional_headers=headers, ping_interval=None, open_timeout=60
    )


async def subscribe_many(
    url: str, who: Sequence[tuple[str, str]], n: int, concurrency: int = 100
) -> list[ClientConnection]:
    """n subscribers, the i-th to ``who[i % len(who)]`` (account, token)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> ClientConnection:
        async with gate:
            account, token = who[i % len(who)]
            return await subscribe(url, account, token)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def listen(ws: ClientConnection, seen: Seen) -> None:
    """Note the arrival of each transfer event until the socket closes."""
    with contextlib.suppress(Exception):
        async for raw in ws:
            message = orjson.loads(raw)
            if message["type"].startswith("transfer."):
                seen.setdefault((message["transfer"]["id"], message["type"]), time.perf_counter())


async def close_all(socks: Sequence[ClientConnection], concurrency: int = 500) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            await ws.close()

    await asyncio.gather(*(one(ws) for ws in socks), return_exceptions=True)


async def wait_until(done: Callable[[], bool], limit_s: float) -> bool:
    """Poll a condition every 5 ms (a bench may; tests wait on events instead)."""
    deadline = time.perf_counter() + limit_s
    while not done():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True
