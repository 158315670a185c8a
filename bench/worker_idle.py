"""An idle worker's cost, and how soon a transfer's settlement starts after its commit.

``settle web`` and ``settle worker`` run as subprocesses on a fresh SQLite database and
the bundled redis-server. A first transfer starts its partition's drainer; with nothing
more to do, the worker's CPU time (``/proc/<pid>/stat`` utime + stime) over ``--seconds``
gives its idle cost as a percentage of one core (the drainer waiting on its doorbell,
arq looking at its queue). Then transfers are sent one at a time through the API, with a
pause between them so the drainer is idle each time; each one's ``settled_in_ms`` is the
time from its acceptance's commit to its settlement (the batch's time, taken once its
accounts are locked: a slight overestimate of when settling it started).

``--ab DIR`` runs the worker of another source tree (a checkout of main, say) too,
interleaved A, B, A, B in the same conditions, for a before/after comparison.

    python -m bench.worker_idle [--seconds 10] [--pickups 200] [--ab DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench import seed
from bench.seed import User
from bench.stack import REPO, free_port, redis_server, settle_env, stop, wait_http, wait_worker
from bench.stats import summary
from server.settings import Settings

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.contextmanager
def deployment(var: Path, redis_url: str, name: str, src: Path) -> Iterator[tuple[Settings, int]]:
    """``settle web`` (it migrates the database) and ``settle worker`` from source tree
    ``src``; yields the settings and the worker's pid."""
    env = settle_env(var, redis_url, var / f"{name}.db", free_port(), f"bench-{name}")
    env["PYTHONPATH"] = str(src)
    settings = Settings.from_env(env)
    procs: list[subprocess.Popen[bytes]] = []

    def start(what: str) -> subprocess.Popen[bytes]:
        with open(var / f"{name}-{what}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", what],
                env=env,
                cwd=src,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    try:
        web = start("web")
        wait_http(settings.port, web, "/readyz", var / f"{name}-web.log")
        worker = start("worker")
        wait_worker(settings, worker, var / f"{name}-worker.log")
        yield settings, worker.pid
    finally:
        stop(procs)


async def idle_cpu(pid: int, seconds: float) -> float:
    """Percent of one core the process used over ``seconds``."""
    before, started = cpu_s(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100 * (cpu_s(pid) - before) / (time.perf_counter() - started)


async def pickups(stack_url: str, users: list[User], n: int, pause_s: float) -> list[float]:
    """Milliseconds from each of ``n`` transfers' acceptance (its commit) to its
    settlement (the time its batch was planned, once its accounts were locked), sent one
    at a time through the API with a pause between them, so the drainer is idle, waiting
    on its doorbell, each time: a transfer's own ``settled_in_ms``."""
    out: list[float] = []
    sender, recipient = users
    headers = {"Authorization": f"Bearer {sender.token}"}
    body = {"from_account": sender.account, "to_account": recipient.account, "amount": "0.01"}
    async with httpx.AsyncClient(base_url=stack_url, headers=headers, timeout=30) as client:
        for _ in range(n):
            await asyncio.sleep(pause_s)
            sent = await client.post("/api/transfers", json=body)
            assert sent.status_code == 202, sent.text
            tid = sent.json()["id"]
            for _ in range(500):
                seen = (await client.get(f"/api/transfers/{tid}")).json()
                if seen["settled_in_ms"] is not None:
                    out.append(float(seen["settled_in_ms"]))
                    break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError(f"transfer {tid} not settled within 5 s")
    return out


async def measure(
    var: Path, redis_url: str, seconds: float = 10, n: int = 200, src: Path = REPO, name: str = ""
) -> dict[str, Any]:
    """One worker's idle CPU (% of a core over ``seconds``), its partition's drainer
    started and waiting, and commit → settlement of transfers sent one by one (ms)."""
    label = name or "idle"
    db = var / f"{label}.db"
    seed.create(db)
    seeder = seed.Seeder(db)
    users = seeder.users(2, f"{label}-")
    seeder.close()
    with deployment(var, redis_url, label, src) as (settings, pid):
        # The first transfer starts its partition's drainer (the worker's first look at
        # its queue); from then on it waits on its doorbell, as an idle worker does.
        await pickups(f"http://127.0.0.1:{settings.port}", users, 1, 0)
        await asyncio.sleep(1)
        cpu = await idle_cpu(pid, seconds)
        latencies = await pickups(f"http://127.0.0.1:{settings.port}", users, n, 0.02)
    return {"idle_cpu_pct": cpu, "seconds": seconds, "pickup_ms": summary(latencies)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10, help="idle CPU sampled this long")
    p.add_argument("--pickups", type=int, default=200, help="transfers sent one at a time")
    p.add_argument("--ab", type=Path, help="another source tree, measured interleaved")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds with --ab")
    args = p.parse_args()
    trees = [("this", REPO)] + ([("other", args.ab.resolve())] if args.ab else [])
    with tempfile.TemporaryDirectory(prefix="settle-idle-") as tmp, redis_server(Path(tmp)) as url:
        for r in range(args.rounds if args.ab else 1):
            for label, src in trees:
                res = await measure(Path(tmp), url, args.seconds, args.pickups, src, f"{label}{r}")
                pk = res["pickup_ms"]
                print(
                    f"{label:5} ({src}): idle CPU {res['idle_cpu_pct']:.2f}% of a core over"
                    f" {args.seconds:g} s; commit → settlement p50 {pk['p50']:.2f} / p99"
                    f" {pk['p99']:.2f} / max {pk['max']:.2f} ms ({args.pickups} transfers)",
                    flush=True,
                )


if __name__ == "__main__":
    uvloop.run(main())
