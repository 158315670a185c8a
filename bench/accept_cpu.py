"""The web process's CPU per accepted transfer on SQLite and on PostgreSQL, in turns.

    python -m bench.accept_cpu [--rounds 3] [--pg URL]

Each round runs ``make bench``'s acceptance load (16 clients for 10 s, the worker running)
on a fresh SQLite stack, then on a fresh PostgreSQL database, and prints each one's rate,
p99 and web CPU per accepted transfer, and their ratio (the target: PostgreSQL at most
1.5x SQLite's). Single runs here move by a quarter; rounds side by side show how much.
A checkout of another version runs the same command, for a before/after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import uvloop

from bench import seed
from bench.run import FULL, LOAD_USERS, STACK_ENV, accept_load, transfer_count
from bench.stack import connected, cpu_seconds, drain, postgres_database, redis_server, running
from server.web import passwords


async def acceptance(var: Path, redis_url: str, database: Path | str, name: str) -> float:
    """One acceptance run; the web process's CPU ms per accepted transfer."""
    with running(var, redis_url, database, name, extra=STACK_ENV) as stack:
        async with connected(stack.settings) as store:
            users = await seed.users_through(store, LOAD_USERS, f"{name}u")
            created, cpu = await transfer_count(store), cpu_seconds(stack.pid("web"))
            run = await accept_load(stack, users, FULL)
            cpu = cpu_seconds(stack.pid("web")) - cpu
            created = await transfer_count(store) - created
            per = cpu * 1000 / max(created, 1)
            print(
                f"{name}: {run.rate:,.0f}/s, p99 {run.to_json()['p99']:.1f} ms,"
                f" web CPU {per:.3f} ms a transfer",
                flush=True,
            )
            await drain(stack, store)
    return per


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--pg",
        default=os.environ.get("TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
    )
    args = p.parse_args()
    passwords.set_cost(2**10)
    ratios = []
    with (
        tempfile.TemporaryDirectory(prefix="settle-bench-") as tmp,
        redis_server(Path(tmp)) as redis_url,
    ):
        var = Path(tmp)
        for r in range(args.rounds):
            on_sqlite = await acceptance(var, redis_url, var / f"round{r}.db", f"sqlite{r}")
            async with postgres_database(args.pg) as url:
                if url is None:
                    raise SystemExit(f"no PostgreSQL at {args.pg}")
                on_pg = await acceptance(var, redis_url, url, f"pg{r}")
            ratios.append(on_pg / on_sqlite)
            print(f"round {r + 1}: PostgreSQL / SQLite = {ratios[-1]:.2f}x", flush=True)
    print(f"median of {len(ratios)} rounds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    uvloop.run(main())
