"""Settlement throughput of a running worker.

n pending transfers are seeded at once (``bench.seed``), their settlement jobs queued
aside in a Redis sorted set of their own, and then released into the worker's queue in
one command (ZUNIONSTORE), so the worker finds all n jobs waiting at the first poll and
neither process start-up nor enqueueing is timed. Timed from the release to the
``settled_at`` of the last transfer to settle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import sqlalchemy as sa
from arq import create_pool

from bench.seed import Seeder
from bench.stack import Stack, drain, pending
from server.dispatch import Dispatcher
from server.redisbox import redis_settings
from server.schema import transfers
from server.store import Store


async def settle_queued(
    stack: Stack, store: Store, among: Sequence[str], n: int, limit_s: float = 300
) -> dict[str, float]:
    """Seed n pending transfers among ``among``, release their jobs, time the settling.

    Nothing else may be pending or queued meanwhile."""
    await drain(stack, store)
    seeder = Seeder(stack.database)
    ids = seeder.pending(n, among)
    seeder.close()
    settings = stack.settings
    assert settings.redis_url is not None
    aside = dataclasses.replace(settings, redis_prefix=f"{settings.redis_prefix}-aside")
    redis = await create_pool(redis_settings(settings, settings.redis_url))
    try:
        await Dispatcher(redis, aside).enqueue_settlement(ids)
        released = time.time()
        await redis.zunionstore(settings.queue_name, [settings.queue_name, aside.queue_name])
        await redis.delete(aside.queue_name)
    finally:
        await redis.aclose()
    left = n
    while left and time.time() - released < limit_s:
        await asyncio.sleep(0.01)
        left = await pending(store)
    last = await store.fetch_val(sa.select(sa.func.max(transfers.c.settled_at)))
    seconds = last / 1e6 - released
    return {"transfers": n, "left": left, "seconds": seconds, "rate": (n - left) / seconds}
