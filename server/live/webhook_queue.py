"""Webhook deliveries' signals in Redis, and their jobs on their own arq queue
(``Settings.webhook_queue_name``): a receiver that is slow or dead holds these jobs'
slots, never settlement's.

- **Nudges.** After a commit, if any endpoint is enabled (a flag the API and the
  sweeper keep), the dispatcher pushes the accounts of the committed events onto the
  nudges list, in its one pipeline (``NUDGE_SCRIPT``); each worker's router
  (``jobs.webhooks.route``) pops them, finds the accounts' owners' endpoints and pokes
  them. A deployment without webhooks pays one EVALSHA per commit batch.
- **Pokes.** Each endpoint has one delivery job at a time (a fixed job id: arq refuses
  one still queued or running) and a bell: a poke rings the bell, then queues the job.
  A running job that has nothing left waits on its bell (BLPOP) for ``LINGER_S``, so a
  busy endpoint's next event goes out at once; one that has ended is queued again.

Nothing here is needed for correctness: the database's cursors are. A signal lost (a
worker killed after popping, Redis restarted, a poke just as a job ends) delays a
delivery until the sweeper finds the endpoint behind.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, cast

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from server.settings import Settings

log = logging.getLogger("settle.webhooks")

DELIVER_JOB = "webhooks_deliver"
# A bell unread this long is dropped: the sweeper covers the rest.
BELL_TTL_S = 60
# Nudges kept while no worker pops them (workers down): the sweeper reads the database.
MAX_NUDGES = 100_000
NUDGE_SCRIPT = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ARGV))
redis.call('LTRIM', KEYS[2], -{MAX_NUDGES}, -1)
return 1
"""
# Sent by its digest (EVALSHA), as the doorbell's ring is: the dispatcher loads both
# scripts again when Redis has forgotten them.
NUDGE_SHA = hashlib.sha1(NUDGE_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def enabled_key(settings: Settings) -> str:
    """Set while any endpoint is enabled (by the API and the sweeper): commits nudge
    only then."""
    return f"{settings.redis_prefix}:webhooks:enabled"


def nudges_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}:webhooks:nudges"


def bell_key(settings: Settings, endpoint_id: str) -> str:
    return f"{settings.redis_prefix}:webhooks:bell:{endpoint_id}"


def deliver_job_id(settings: Settings, endpoint_id: str) -> str:
    return f"{settings.redis_prefix}:webhooks:deliver:{endpoint_id}"


def nudge_keys(settings: Settings) -> list[str]:
    """The keys of ``NUDGE_SCRIPT`` (its arguments: the accounts)."""
    return [enabled_key(settings), nudges_key(settings)]


async def poke(redis: ArqRedis, settings: Settings, endpoint_ids: Iterable[str]) -> None:
    """Have each endpoint's delivery job look (again): best-effort, like every
    after-commit signal."""
    try:
        for endpoint_id in endpoint_ids:
            bell = bell_key(settings, endpoint_id)
            async with redis.pipeline(transaction=False) as pipe:
                pipe.rpush(bell, b"1")
                pipe.expire(bell, BELL_TTL_S)
                await pipe.execute()
            await redis.enqueue_job(
                DELIVER_JOB,
                endpoint_id,
                _job_id=deliver_job_id(settings, endpoint_id),
                _queue_name=settings.webhook_queue_name,
            )
    except (RedisError, OSError) as exc:
        log.warning("webhook endpoints not poked, the sweeper will: %r", exc)


async def wait_bell(
    redis: ArqRedis, settings: Settings, endpoint_id: str, timeout_s: float
) -> bool:
    """Whether the endpoint's bell rang within ``timeout_s`` (the rest of it cleared)."""
    bell = bell_key(settings, endpoint_id)
    # BLPOP takes fractions of a second (Redis 6+), which redis-py's types do not say.
    got = await cast(Awaitable[Any], redis.blpop([bell], cast(int, timeout_s)))
    if got is None:
        return False
    await redis.delete(bell)
    return True


async def clear_bell(redis: ArqRedis, settings: Settings, endpoint_id: str) -> None:
    await redis.delete(bell_key(settings, endpoint_id))


async def next_nudges(redis: ArqRedis, settings: Settings, timeout_s: float) -> list[str]:
    """The accounts nudged since the last call (waiting up to ``timeout_s`` for one)."""
    key = nudges_key(settings)
    first = await cast(Awaitable[Any], redis.blpop([key], cast(int, timeout_s)))
    if first is None:
        return []
    more = await cast(Awaitable[list[Any] | None], redis.lpop(key, 1000)) or []
    return sorted({_text(first[1]), *(_text(m) for m in more)})


async def set_enabled(redis: ArqRedis, settings: Settings, enabled: bool) -> None:
    try:
        if enabled:
            await redis.set(enabled_key(settings), b"1")
        else:
            await redis.delete(enabled_key(settings))
    except (RedisError, OSError) as exc:
        log.warning("webhooks' enabled flag not set: %r", exc)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
