"""Per-user limits shared by every web process, counted in Redis.

Transfers: at most ``SETTLE_TRANSFER_RATE`` attempts per user per second, over the API
and the pages alike; more answer ``429 rate_limited`` with ``Retry-After`` (a replay of
an idempotency key already used is answered anyway: it sends nothing). Previews, which
read the recipient's account, have a budget of the same size of their own. A fixed
one-second window (INCR and EXPIRE): a client may get up to twice the rate across a
window boundary, which is fine for a brake on runaway scripts.

Checks that arrive while one round trip is in flight share the next one
(``server.batching``): under load a web process makes one Redis round trip for a whole
batch of transfers, not one each.

When Redis is unreachable the limit is not applied (and a warning is logged): refusing
every payment because the brake is broken would be the worse failure.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.batching import Batched
from server.domain import errors
from server.settings import Settings

log = logging.getLogger("settle.limits")


class TransferRate:
    """The per-user transfer rate limit of one web process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._counted = Batched(self._count)

    async def check(self, user_id: str, kind: str = "transfers") -> None:
        """Count one ``kind`` of attempt ("transfers", or "previews", counted apart) for
        ``user_id``; raise RateLimited past the limit."""
        limit = self.settings.transfer_rate
        if limit <= 0:
            return
        key = f"{self.settings.redis_prefix}:rate:{kind}:{user_id}:{int(time.time())}"
        if await self._counted(key) > limit:
            raise errors.RateLimited(
                f"at most {limit} {kind} per second; try again in a moment", retry_after=1
            )

    async def _count(self, keys: list[str]) -> list[int]:
        """INCR each key (one round trip); zeros when Redis is unreachable."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, 2)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("transfer rate limit not applied, redis unavailable: %r", exc)
            return [0] * len(keys)
        return [int(count) for count in replies[::2]]
