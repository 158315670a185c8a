"""Live-stream latency (``make bench-live``; ``make bench`` runs the same functions).

``drive``: transfers at a fixed rate from senders that each have a subscriber: POST start
-> 202, -> ``transfer.pending`` and -> ``transfer.completed`` at the sender's subscriber.
``fan_out``: single events to many subscribers of one account: POST start ->
``transfer.pending`` at each of them.

    python -m bench.live [--rate 500] [--seconds 10] [--fanout 1000]
        [--runs 1] [--recipient sink|ring] [--pg URL] [--slow-ms MS]

``--recipient sink`` (what ``make bench`` measures): every sender pays one account, which
each acceptance then locks to log its incoming pending event (a merchant's account);
``ring``: each sender pays the next, so no account is in every transfer. ``--pg``: on a
database of its own on that PostgreSQL server instead of a SQLite file. ``--runs``:
that many windows back to back on one deployment. ``--slow-ms``: also list when (seconds
into the window) each transfer whose pending event took longer than that was sent: slow
ones that cluster within a tenth of a second share one stall.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import uvloop

from bench import loadgen, seed
from bench.seed import User
from bench.sockets import Seen, close_all, listen, subscribe, subscribe_many, wait_until
from bench.stack import (
    Stack,
    connected,
    postgres_database,
    redis_server,
    running,
    transfer_request,
)
from bench.stats import line

SENDERS = 10


@dataclasses.dataclass
class Live:
    """Milliseconds from POST start, per accepted transfer."""

    accepted: list[float]
    completed: list[float]
    failed: int
    # (seconds into the window it was sent, ms to its pending event), in sending order.
    pending_when: list[tuple[float, float]]

    @property
    def pending(self) -> list[float]:
        return [ms for _, ms in self.pending_when]

    @property
    def unheard(self) -> int:
        """Accepted transfers whose completion the sender's subscriber never heard
        (within 30 s of the last POST): the latencies leave them out, so any is a
        warning."""
        return len(self.accepted) - len(self.completed)


@loadgen.no_gc_pauses()
async def drive(
    stack: Stack,
    senders: Sequence[User],
    sink: User,
    rate: float,
    seconds: float,
    ring: bool = False,
) -> Live:
    """Transfers of 0.01 from ``senders`` in turn to ``sink`` at ``rate`` per second
    (``ring``: each to the next sender instead)."""
    seen: Seen = {}
    socks = [await subscribe(stack.url, u.account, u.token) for u in senders]
    listeners = [asyncio.create_task(listen(ws, seen)) for ws in socks]
    pool = loadgen.Pool("127.0.0.1", stack.settings.port)
    await pool.warm(16)
    started: dict[str, float] = {}
    accepted: list[float] = []
    failed: list[int] = []
    run = secrets.token_hex(4)

    async def one(i: int) -> None:
        user = senders[i % len(senders)]
        to = senders[(i + 1) % len(senders)] if ring else sink
        raw = transfer_request(stack.host, user.token, user.account, to.account, f"{run}-{i}")
        t0 = time.perf_counter()
        try:
            status, body = await pool.send(raw)
        except OSError:
            status, body = 0, b""
        if status != 202:
            failed.append(status)
            return
        accepted.append((time.perf_counter() - t0) * 1000)
        started[orjson.loads(body)["id"]] = t0

    await loadgen.at_rate(rate, seconds, one)
    await wait_until(lambda: all((t, "transfer.completed") in seen for t in started), 30)
    pool.close()
    for task in listeners:
        task.cancel()
    await close_all(socks)

    def since_post(kind: str) -> list[tuple[float, float]]:
        """(seconds into the window, ms from POST start to ``kind``), in sending order."""
        first = min(started.values(), default=0.0)
        return sorted(
            (t0 - first, (seen[(t, kind)] - t0) * 1000)
            for t, t0 in started.items()
            if (t, kind) in seen
        )

    completed = [ms for _, ms in since_post("transfer.completed")]
    return Live(accepted, completed, len(failed), since_post("transfer.pending"))


@loadgen.no_gc_pauses()
async def fan_out(stack: Stack, sender: User, subscriber: User, n: int, events: int) -> list[float]:
    """``events`` transfers from ``sender`` into an account with ``n`` subscribers; the
    pending event's delivery latency at each of them, from POST start."""
    socks = await subscribe_many(stack.url, [(subscriber.account, subscriber.token)], n)
    seen: list[Seen] = [{} for _ in socks]
    listeners = [asyncio.create_task(listen(ws, s)) for ws, s in zip(socks, seen, strict=True)]
    pool = loadgen.Pool("127.0.0.1", stack.settings.port)
    latencies: list[float] = []
    run = secrets.token_hex(4)
    for i in range(events):
        raw = transfer_request(
            stack.host, sender.token, sender.account, subscriber.account, f"{run}-{i}"
        )
        t0 = time.perf_counter()
        status, body = await pool.send(raw)
        assert status == 202, body
        key = (orjson.loads(body)["id"], "transfer.pending")
        await wait_until(lambda k=key: all(k in s for s in seen), 10)  # type: ignore[misc]
        latencies += [(s[key] - t0) * 1000 for s in seen if key in s]
        await asyncio.sleep(0.2)
    pool.close()
    for task in listeners:
        task.cancel()
    await close_all(socks)
    return latencies


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--fanout", type=int, default=1000)
    p.add_argument("--fanout-events", type=int, default=5)
    p.add_argument("--runs", type=int, default=1, help="windows back to back")
    p.add_argument("--recipient", choices=["sink", "ring"], default="sink")
    p.add_argument("--pg", metavar="URL", help="a PostgreSQL server instead of SQLite")
    p.add_argument("--slow-ms", type=float, help="list when the slower pending ones were sent")
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp,
        redis_server(Path(tmp)) as redis_url,
    ):
        var = Path(tmp)
        if args.pg is None:
            seed.create(var / "settle.db")
            seeder = seed.Seeder(var / "settle.db")
            users = seeder.users(SENDERS + 3, "live")
            seeder.close()
            await measure(args, var, redis_url, var / "settle.db", users)
            return
        async with postgres_database(args.pg) as url:
            if url is None:
                raise SystemExit(f"no PostgreSQL at {args.pg}")
            await measure(args, var, redis_url, url, None)


async def measure(
    args: argparse.Namespace,
    var: Path,
    redis_url: str,
    database: Path | str,
    users: list[User] | None,
) -> None:
    """The windows, then the fan-out, on one deployment (users seeded through it when
    none are given)."""
    with running(var, redis_url, database, "live") as stack:
        if users is None:
            async with connected(stack.settings) as store:
                users = await seed.users_through(store, SENDERS + 3, "live")
        for _ in range(args.runs):
            live = await drive(
                stack,
                users[:SENDERS],
                users[SENDERS],
                args.rate,
                args.seconds,
                args.recipient == "ring",
            )
            print(
                f"{len(live.accepted)} transfers accepted, {live.failed} failed,"
                f" {live.unheard} never heard completed at their sender's subscriber"
            )
            print(line(f"POST start -> 202 response ({args.rate}/s)", live.accepted))
            print(line(f"POST start -> transfer.pending at sender ({args.rate}/s)", live.pending))
            print(
                line(f"POST start -> transfer.completed at sender ({args.rate}/s)", live.completed)
            )
            if args.slow_ms is not None:
                slow = [
                    f"{s:.2f} s: {ms:.0f} ms" for s, ms in live.pending_when if ms > args.slow_ms
                ]
                more = f" (and {len(slow) - 60} more)" if len(slow) > 60 else ""
                print(f"pending over {args.slow_ms:g} ms, sent at: " + ", ".join(slow[:60]) + more)
        if args.fanout:
            ms = await fan_out(stack, users[-2], users[-1], args.fanout, args.fanout_events)
            print(line(f"POST start -> pending at each of {args.fanout} subscribers", ms))


if __name__ == "__main__":
    uvloop.run(main())
