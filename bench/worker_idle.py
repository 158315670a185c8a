"""An idle worker's cost and how soon it picks up a new job.

``settle web`` and ``settle worker`` run as subprocesses on a fresh SQLite database and
the bundled redis-server. With nothing to do, the worker's CPU time (``/proc/<pid>/stat``
utime + stime) over ``--seconds`` gives its idle cost as a percentage of one core. Then
jobs are enqueued one at a time, the way the web process does (``Dispatcher``), with a
pause between them so the worker is idle each time; pickup is the time from handing the
job to Redis to the worker claiming it (arq's ``in-progress`` key being set, seen through
a keyspace notification: a slight overestimate, never an underestimate).

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

import uvloop
from arq import create_pool
from redis.asyncio import Redis

from bench.stack import REPO, free_port, redis_server, settle_env, stop, wait_http, wait_worker
from bench.stats import summary
from server.dispatch import Dispatcher, job_id
from server.redisbox import redis_settings
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


async def pickups(settings: Settings, n: int, pause_s: float) -> list[float]:
    """Milliseconds from enqueueing each of ``n`` jobs to the worker claiming it."""
    assert settings.redis_url is not None
    pool = await create_pool(redis_settings(settings, settings.redis_url))
    listener = Redis.from_url(settings.redis_url)
    await listener.config_set("notify-keyspace-events", "K$")
    pubsub = listener.pubsub()
    await pubsub.psubscribe(f"__keyspace@*__:arq:in-progress:{job_id(settings, 'pickup')}*")
    dispatch = Dispatcher(pool, settings)
    out: list[float] = []
    try:
        while await pubsub.get_message(timeout=0.5) is not None:
            pass  # the subscription's confirmation
        for i in range(n):
            await asyncio.sleep(pause_s)
            key = f"pickup{i:06d}"
            started = time.perf_counter()
            await dispatch.enqueue_settlement([key])
            while True:
                msg = await pubsub.get_message(timeout=5)
                if msg is None:
                    raise RuntimeError(f"job {key} not picked up within 5 s")
                if msg["type"] == "pmessage" and msg["data"] == b"set":
                    if msg["channel"].decode().endswith(key):
                        break
            out.append((time.perf_counter() - started) * 1000)
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await dispatch.close()
        await pool.aclose()
    return out


async def measure(
    var: Path, redis_url: str, seconds: float = 10, n: int = 200, src: Path = REPO, name: str = ""
) -> dict[str, Any]:
    """One worker's idle CPU (% of a core over ``seconds``) and pickup latency (ms)."""
    with deployment(var, redis_url, name or "idle", src) as (settings, pid):
        await asyncio.sleep(1)  # past the start-up (the sweeper's first run, imports)
        cpu = await idle_cpu(pid, seconds)
        latencies = await pickups(settings, n, 0.02)
    return {"idle_cpu_pct": cpu, "seconds": seconds, "pickup_ms": summary(latencies)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10, help="idle CPU sampled this long")
    p.add_argument("--pickups", type=int, default=200, help="jobs enqueued one at a time")
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
                    f" {args.seconds:g} s; pickup p50 {pk['p50']:.2f} / p99 {pk['p99']:.2f} /"
                    f" max {pk['max']:.2f} ms ({args.pickups} jobs)",
                    flush=True,
                )


if __name__ == "__main__":
    uvloop.run(main())
