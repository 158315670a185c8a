"""Settlement throughput of a running worker.

n pending transfers are seeded at once (``bench.seed``) while the worker is stopped (a
running drainer would start on them as they are written), the worker started again,
and, once it is alive, every partition rung in one command, so that neither process
start-up nor acceptance is timed. Timed from the ring to the ``settled_at`` of the last
transfer to settle.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import sqlalchemy as sa
from arq import create_pool

from bench.seed import Seeder
from bench.stack import Stack, drain, pending, start, stop, wait_crew, wait_worker
from server.domain.clock import new_id, now_us
from server.domain.ledger import Order
from server.live.dispatch import Dispatcher
from server.redisbox import redis_settings
from server.store import Store, ledger
from server.store.schema import accounts, transfers


async def settle_queued(
    stack: Stack, store: Store, among: Sequence[str], n: int, limit_s: float = 300
) -> dict[str, float]:
    """Seed n pending transfers among ``among``, ring their partitions, time the settling.

    Nothing else may be pending meanwhile."""
    await drain(stack, store)
    stop([stack.procs["worker"]])
    seeder = Seeder(stack.database)
    seeder.pending(n, among)
    seeder.close()
    return await _release(stack, store, n, limit_s)


async def _release(stack: Stack, store: Store, n: int, limit_s: float) -> dict[str, float]:
    """Start the worker, ring every partition once it is alive, time the settling."""
    log = stack.var / "settlement-worker.log"
    stack.procs["worker"] = start("server.cli", "worker", env=stack.env, log=log)
    settings = stack.settings
    wait_worker(settings, stack.procs["worker"], log)
    await wait_crew(settings, 1)
    assert settings.redis_url is not None
    redis = await create_pool(redis_settings(settings, settings.redis_url))
    dispatch = Dispatcher(redis, settings)
    try:
        released = time.time()
        await dispatch.ring(range(settings.settle_partitions))
    finally:
        await dispatch.close()
        await redis.aclose()
    left = n
    while left and time.time() - released < limit_s:
        await asyncio.sleep(0.01)
        left = await pending(store)
    last = await store.fetch_val(sa.select(sa.func.max(transfers.c.settled_at)))
    seconds = last / 1e6 - released
    return {"transfers": n, "left": left, "seconds": seconds, "rate": (n - left) / seconds}


async def settle_queued_through(
    stack: Stack, store: Store, among: Sequence[str], n: int, limit_s: float = 300
) -> dict[str, float]:
    """``settle_queued`` on any database: the n transfers accepted through the ledger (16
    at a time) while the worker is stopped, then rung and timed the same way."""
    await drain(stack, store)
    stop([stack.procs["worker"]])
    owners = {
        r["id"]: r["user_id"]
        for r in await store.fetch_all(sa.select(accounts.c.id, accounts.c.user_id))
    }
    rng = random.Random(5)
    gate = asyncio.Semaphore(16)

    async def accept() -> None:
        src, dst = rng.sample(list(among), 2)
        order = Order(owners[src], src, dst, 1)
        async with gate:
            await store.transaction(lambda conn: ledger.accept(conn, order, new_id("tr"), now_us()))

    await asyncio.gather(*(accept() for _ in range(n)))
    return await _release(stack, store, n, limit_s)
