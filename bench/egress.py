"""Redis pub/sub egress with several web processes: does it grow with subscribers or
with processes?

Four ``settle web`` processes (one uvicorn process each, separate ports) share one
SQLite database and the bundled redis-server. For each scenario, WebSocket subscribers
are opened on the first ``k`` of ``--accounts`` accounts, one each, spread round-robin
over the processes; then ``--events`` events are published to EVERY account's channel
(as the dispatcher does after commits; ``seq`` 0, so subscribers drop them and no
WebSocket traffic muddies the figure), and Redis's ``total_net_output_bytes`` (INFO
stats) is read before and after. What Redis sends the publisher (":N\\r\\n" per publish)
and one INFO reply are included; they are small next to the fan-out.

With one pattern subscription per process (every process gets every event), egress is
events x processes whatever ``k``; with a channel per subscribed account, it is events of
subscribed accounts x processes holding a subscriber of that account.

``--ab DIR`` runs the web processes of another source tree (a checkout of main, say) as
well, in the same run, for a before/after comparison.

    python -m bench.egress [--processes 4] [--accounts 200] [--events 10] [--ab DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop
from redis.asyncio import Redis

from bench import seed
from bench.sockets import close_all, subscribe
from bench.stack import REPO, free_port, redis_server, settle_env, stop, wait_http
from server.live.dispatch import channel
from server.settings import Settings
from server.web import passwords

PREFIX = "bench-egress"


def event(account: str) -> bytes:
    """An event the size of a real ``transfer.pending`` (about 450 bytes), seq 0."""
    return orjson.dumps(
        {
            "type": "transfer.pending",
            "account": account,
            "seq": 0,
            "transfer": {
                "id": "tr_0123456789abcdef0123456789",
                "from_account": account,
                "to_account": "acc_0123456789abcdef0123456789",
                "from_name": "someone",
                "to_name": "someone else",
                "amount": "12.34",
                "currency": "USD",
                "memo": "rent, March",
                "status": "pending",
                "kind": "transfer",
                "failure_reason": None,
                "created_at": "2026-01-01T00:00:00.000000Z",
                "settled_at": None,
                "expires_at": "2026-01-02T00:00:00.000000Z",
            },
            "balance": {"posted": "1000.00", "pending_debits": "12.34", "available": "987.66"},
        }
    )


@contextlib.contextmanager
def web_processes(
    var: Path, redis_url: str, database: Path, n: int, src: Path, name: str
) -> Iterator[list[str]]:
    """``n`` ``settle web`` processes from source tree ``src``; yields their URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(n):
            env = settle_env(var, redis_url, database, free_port(), PREFIX)
            env["PYTHONPATH"] = str(src)
            port = Settings.from_env(env).port
            log = var / f"{name}-web{i}.log"
            with open(log, "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "server.cli", "web"],
                        env=env,
                        cwd=src,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            wait_http(port, procs[-1], "/readyz", log)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        stop(procs)


async def out_bytes(client: Redis) -> int:
    return int((await client.info("stats"))["total_net_output_bytes"])


async def subscribed(client: Redis, accounts: Sequence[str], limit_s: float = 20) -> None:
    """Until Redis sends each account's events to some process (a channel subscription,
    or a pattern subscription of every process); a benchmark may poll."""
    deadline = time.monotonic() + limit_s
    settings = _settings()
    while time.monotonic() < deadline:
        if await client.pubsub_numpat() > 0:
            await asyncio.sleep(0.2)  # pattern subscriptions: let every socket register
            return
        counts = await client.pubsub_numsub(*(channel(settings, a) for a in accounts))
        if all(int(n) > 0 for _, n in counts):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("subscriptions not confirmed in time")


def _settings() -> Settings:
    return Settings(
        database_url="", redis_url=None, secret_key="", var_dir=Path(), redis_prefix=PREFIX
    )


async def scenario(
    client: Redis, urls: Sequence[str], users: Sequence[seed.User], k: int, events: int
) -> dict[str, Any]:
    """Subscribers on the first ``k`` accounts, then ``events`` to every account."""
    socks = [
        await subscribe(urls[i % len(urls)], u.account, u.token) for i, u in enumerate(users[:k])
    ]
    try:
        if socks:
            await subscribed(client, [u.account for u in users[:k]])
        else:
            await asyncio.sleep(0.2)
        payloads = [(channel(_settings(), u.account), event(u.account)) for u in users]
        before = await out_bytes(client)
        for _ in range(events):
            async with client.pipeline(transaction=False) as pipe:
                for ch, data in payloads:
                    pipe.publish(ch, data)
                await pipe.execute()
        await asyncio.sleep(0.3)  # what Redis has queued for the subscribers is written
        sent = await out_bytes(client) - before
    finally:
        await close_all(socks)
    published = events * len(users)
    return {
        "subscribed_accounts": k,
        "published": published,
        "bytes": sent,
        "bytes_per_event": sent / published,
        "event_bytes": len(payloads[0][1]),
    }


async def measure(
    var: Path,
    redis_url: str,
    users: Sequence[seed.User],
    database: Path,
    processes: int,
    events: int,
    src: Path,
    name: str,
) -> list[dict[str, Any]]:
    client = Redis.from_url(redis_url)
    out = []
    try:
        with web_processes(var, redis_url, database, processes, src, name) as urls:
            n = len(users)
            for k in sorted({0, processes, n // 20, n // 4, n}):
                out.append(await scenario(client, urls, users, k, events))
    finally:
        await client.aclose()
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--accounts", type=int, default=200, help="accounts published to")
    p.add_argument("--events", type=int, default=10, help="events per account per scenario")
    p.add_argument("--ab", type=Path, help="another source tree, measured in the same run")
    args = p.parse_args()
    passwords.set_cost(2**10)
    trees = [("this", REPO)] + ([("other", args.ab.resolve())] if args.ab else [])
    with (
        tempfile.TemporaryDirectory(prefix="settle-egress-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        var = Path(tmp)
        database = var / "settle.db"
        seed.create(database)
        seeder = seed.Seeder(database)
        users = seeder.users(args.accounts, "egress")
        seeder.close()
        for label, src in trees:
            rows = await measure(var, url, users, database, args.processes, args.events, src, label)
            print(f"{label} ({src}), {args.processes} web processes:", flush=True)
            for r in rows:
                print(
                    f"  subscribers on {r['subscribed_accounts']:4} of {args.accounts} accounts:"
                    f" {r['bytes']:>10,} B out for {r['published']:,} events published"
                    f" ({r['bytes_per_event']:7.1f} B per event; an event is"
                    f" {r['event_bytes']} B)",
                    flush=True,
                )


if __name__ == "__main__":
    uvloop.run(main())
