"""A small HTTP/1.1 load generator over asyncio streams.

Closed loop (N clients, each sending its next request as soon as its last one is answered)
and open loop (requests started at a fixed rate, whatever the answers do), on keep-alive
connections. Far lighter per request than an HTTP client library, so that on a 2-core
machine the generator takes as little CPU from the server under test as it can; the
requests are prebuilt bytes and only the status line and Content-Length are parsed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from bench.stats import summary


def request(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request as bytes (keep-alive; Content-Length when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection, one request at a time. Bodies must come with a
    Content-Length (Starlette's responses do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send a prebuilt request; (status, body) of its response."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for header in head.split(b"\r\n")[1:]:
            name, _, value = header.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
                break
        body = await self.reader.readexactly(length) if length else b""
        self.used = time.monotonic()
        return int(head[9:12]), body

    def close(self) -> None:
        self.writer.close()


# uvicorn closes a keep-alive connection after 5 s without a request.
IDLE_LIMIT_S = 4.0


class Pool:
    """Connections for an open-loop load: a request takes the most recently used idle
    one (never one idle long enough for the server to be closing it) or opens another."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[Connection] = []

    async def warm(self, n: int) -> None:
        self.idle += [await Connection.open(self.host, self.port) for _ in range(n)]

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        stale = time.monotonic() - IDLE_LIMIT_S
        while self.idle and self.idle[0].used < stale:
            self.idle.pop(0).close()
        conn = self.idle.pop() if self.idle else await Connection.open(self.host, self.port)
        try:
            result = await conn.send(raw)
        except BaseException:
            conn.close()
            raise
        self.idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle = []


@dataclasses.dataclass
class Run:
    """What a closed-loop run measured: requests answered within the timed window."""

    seconds: float
    latencies_ms: list[float]
    statuses: collections.Counter[int]

    @property
    def rate(self) -> float:
        """Answers with a 2xx status per second."""
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        return ok / self.seconds

    def to_json(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            **summary(self.latencies_ms),
        }


@contextlib.asynccontextmanager
async def no_gc_pauses() -> AsyncIterator[None]:
    """No cyclic garbage collection in the benchmark's own process while it measures (as
    ``timeit`` does), after one collection first; also a decorator of the coroutines
    that measure. Its full collections, with 10,000 client sockets' worth of objects
    alive, took up to 0.8 s here (logged through ``gc.callbacks``; 0.19 s during one
    fan-out), and every latency it was timing grew by as much. Only this process: the
    server under test collects as it always does."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@no_gc_pauses()
async def closed_loop(
    host: str,
    port: int,
    clients: int,
    seconds: float,
    make: Callable[[int, int], bytes],
    warmup_s: float = 1.0,
) -> Run:
    """``clients`` connections, client c sending ``make(c, i)`` for its i-th request, for
    ``warmup_s + seconds``; only the answers that arrive in the last ``seconds`` count."""
    conns = [await Connection.open(host, port) for _ in range(clients)]
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    begin = time.perf_counter() + warmup_s
    end = begin + seconds

    async def client(c: int) -> None:
        conn, i = conns[c], 0
        while (t0 := time.perf_counter()) < end:
            status, _ = await conn.send(make(c, i))
            i += 1
            t1 = time.perf_counter()
            if begin <= t1 <= end:
                latencies.append((t1 - t0) * 1000)
                statuses[status] += 1

    try:
        await asyncio.gather(*(client(c) for c in range(clients)))
    finally:
        for conn in conns:
            conn.close()
    return Run(seconds, latencies, statuses)


async def at_rate(
    rate: float, seconds: float, fire: Callable[[int], Coroutine[Any, Any, None]]
) -> None:
    """Start ``fire(i)`` at ``i / rate`` seconds from now for ``seconds`` (open loop: a
    slow answer never delays the next request), then wait for them all."""
    started: list[asyncio.Task[None]] = []
    begin = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
        started.append(asyncio.create_task(fire(i)))
    await asyncio.gather(*started)
