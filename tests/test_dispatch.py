"""After a commit (server/dispatch.py): jobs and events reach Redis in one round trip
per group of concurrent commits, one settlement job per group, and a job id that is
already queued is never queued twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from arq import create_pool
from arq.connections import ArqRedis

from server.dispatch import Dispatcher, job_id
from server.events import PENDING, Event
from server.redisbox import redis_settings
from server.settings import Settings
from tests.conftest import account_events


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    assert settings.redis_url is not None
    pool = await create_pool(redis_settings(settings, settings.redis_url))
    try:
        yield pool
    finally:
        await pool.aclose()


def event(account: str, seq: int) -> Event:
    transfer = {"id": f"tr_{seq}", "from_account": account, "to_account": "acc_b"}
    return Event(PENDING, account, seq, transfer, {}, 0)


async def test_concurrent_commits_share_one_job_and_publish_every_event(
    settings: Settings, redis: ArqRedis
) -> None:
    dispatch = Dispatcher(redis, settings)
    async with account_events(settings, "acc_a") as pubsub:
        await asyncio.gather(
            *(dispatch.after_commit([event("acc_a", i)], settle=[f"tr_{i}"]) for i in range(1, 11))
        )
        seqs: list[int] = []
        async with asyncio.timeout(10):
            while len(seqs) < 10:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    seqs.append(orjson.loads(message["data"])["seq"])
    assert seqs == list(range(1, 11)), "published in commit order"
    queued = await redis.zrange(settings.queue_name, 0, -1)
    assert queued == [job_id(settings, "tr_1").encode()], "one settlement job for the group"
    await dispatch.close()


async def test_a_queued_job_id_is_not_queued_again(settings: Settings, redis: ArqRedis) -> None:
    dispatch = Dispatcher(redis, settings)
    await dispatch.enqueue_settlement(["tr_x", "tr_y"])
    await dispatch.enqueue_settlement(["tr_x"])
    queued = sorted(await redis.zrange(settings.queue_name, 0, -1))
    assert queued == [job_id(settings, t).encode() for t in ("tr_x", "tr_y")]
    assert await redis.exists(f"arq:job:{job_id(settings, 'tr_x')}")


async def test_jobs_are_queued_after_redis_forgets_its_scripts(
    settings: Settings, redis: ArqRedis
) -> None:
    """The enqueue script is sent by its digest alone (no SCRIPT EXISTS round trip); a
    Redis that restarted with an empty script cache gets it again, and nothing is lost."""
    dispatch = Dispatcher(redis, settings)
    await dispatch.enqueue_settlement(["tr_1"])
    await redis.script_flush()
    async with account_events(settings, "acc_a") as pubsub:
        await dispatch.after_commit([event("acc_a", 1)], settle=["tr_2"])
        async with asyncio.timeout(10):
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert orjson.loads(message["data"])["seq"] == 1, "published once, not lost"
    queued = sorted(await redis.zrange(settings.queue_name, 0, -1))
    assert queued == [job_id(settings, t).encode() for t in ("tr_1", "tr_2")]
    await dispatch.close()
