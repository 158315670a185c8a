"""After a commit (server/live/dispatch.py): jobs and events reach Redis in one round trip
per group of concurrent commits, one settlement job per group, and a job id that is
already queued is never queued twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import orjson
import pytest
from arq import create_pool
from arq.connections import ArqRedis

from server.domain.events import Event
from server.domain.model import Balance, Status, Transfer, TransferKind
from server.live import webhook_queue
from server.live.dispatch import Dispatcher
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
    transfer = Transfer(
        f"tr_{seq}",
        TransferKind.TRANSFER,
        account,
        "a",
        "acc_b",
        "b",
        100,
        "USD",
        "",
        Status.PENDING,
        None,
        0,
        None,
        None,
    )
    return Event.of_transfer(transfer, account, seq, Balance(), 0)


def drainers(queued: list[bytes]) -> list[int]:
    """The partitions of the drainer jobs queued in arq (their ids name them)."""
    return sorted(int(j.decode().split(":")[-3]) for j in queued)


async def test_concurrent_commits_share_one_round_trip_and_publish_every_event(
    settings: Settings, redis: ArqRedis
) -> None:
    dispatch = Dispatcher(redis, settings)
    async with account_events(settings, "acc_a") as pubsub:
        await asyncio.gather(
            *(dispatch.after_commit([event("acc_a", i)], settle=[i % 3]) for i in range(1, 11))
        )
        seqs: list[int] = []
        async with asyncio.timeout(10):
            while len(seqs) < 10:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    seqs.append(orjson.loads(message["data"])["seq"])
    assert seqs == list(range(1, 11)), "published in commit order"
    queued = await redis.zrange(settings.queue_name, 0, -1)
    assert drainers(queued) == [0, 1, 2], "one drainer for each partition rung"
    await dispatch.close()


async def test_a_partition_with_a_drainer_starting_gets_no_second_one(
    settings: Settings, redis: ArqRedis
) -> None:
    dispatch = Dispatcher(redis, settings)
    await dispatch.ring([4, 5])
    await dispatch.ring([4])
    queued = await redis.zrange(settings.queue_name, 0, -1)
    assert drainers(queued) == [4, 5]
    assert await redis.exists(*(f"arq:job:{j.decode()}" for j in queued)) == 2
    await dispatch.close()


async def test_rings_reach_redis_after_it_forgets_its_scripts(
    settings: Settings, redis: ArqRedis
) -> None:
    """The ring script is sent by its digest alone (no SCRIPT EXISTS round trip); a
    Redis that restarted with an empty script cache gets it again, and nothing is lost."""
    dispatch = Dispatcher(redis, settings)
    await dispatch.ring([1])
    await redis.script_flush()
    async with account_events(settings, "acc_a") as pubsub:
        await dispatch.after_commit([event("acc_a", 1)], settle=[2])
        async with asyncio.timeout(10):
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert orjson.loads(message["data"])["seq"] == 1, "published once, not lost"
    queued = await redis.zrange(settings.queue_name, 0, -1)
    assert drainers(queued) == [1, 2]
    await dispatch.close()


async def nudged(redis: ArqRedis, settings: Settings) -> list[str]:
    raw: list[bytes] = await cast(
        Awaitable[list[bytes]], redis.lrange(webhook_queue.nudges_key(settings), 0, -1)
    )
    return [r.decode() for r in raw]


async def test_commits_nudge_webhooks_only_while_an_endpoint_is_enabled(
    settings: Settings, redis: ArqRedis
) -> None:
    dispatch = Dispatcher(redis, settings)
    await dispatch.after_commit([event("acc_a", 1)])
    assert await nudged(redis, settings) == []
    await webhook_queue.set_enabled(redis, settings, True)
    await dispatch.after_commit([event("acc_b", 1), event("acc_a", 2), event("acc_b", 2)])
    assert await nudged(redis, settings) == ["acc_a", "acc_b"]
    await dispatch.close()


async def test_nudges_reach_redis_after_it_forgets_its_scripts(
    settings: Settings, redis: ArqRedis
) -> None:
    """The nudge goes by its digest too; a Redis that lost its scripts gets it again."""
    dispatch = Dispatcher(redis, settings)
    await webhook_queue.set_enabled(redis, settings, True)
    await dispatch.after_commit([event("acc_a", 1)])
    await redis.script_flush()
    await dispatch.after_commit([event("acc_b", 1)], settle=[3])
    assert await nudged(redis, settings) == ["acc_a", "acc_b"]
    assert drainers(await redis.zrange(settings.queue_name, 0, -1)) == [3]
    await dispatch.close()
