"""Per-user limits shared by every web process, counted in Redis.

Transfers: at most ``SETTLE_TRANSFER_RATE`` acceptances per user per second, over the
API and the pages alike; more answer ``429 rate_limited`` with ``Retry-After``. A fixed
one-second window (one INCR and EXPIRE, one round trip): a client may get up to twice
the rate across a window boundary, which is fine for a brake on runaway scripts.

When Redis is unreachable the limit is not applied (and a warning is logged): refusing
every payment because the brake is broken would be the worse failure.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server import errors
from server.settings import Settings

log = logging.getLogger("settle.limits")


async def check_transfer_rate(redis: Redis, settings: Settings, user_id: str) -> None:
    """Count one transfer attempt for ``user_id``; raise RateLimited past the limit."""
    limit = settings.transfer_rate
    if limit <= 0:
        return
    window = int(time.time())
    key = f"{settings.redis_prefix}:rate:transfers:{user_id}:{window}"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2)
            count, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("transfer rate limit not applied, redis unavailable: %r", exc)
        return
    if int(count) > limit:
        raise errors.RateLimited(
            f"at most {limit} transfers per second; try again in a moment", retry_after=1
        )
