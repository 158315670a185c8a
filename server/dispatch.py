"""After a commit: enqueue settlement jobs and publish the committed events on Redis.

Both are best-effort by design. The database already holds the truth: a lost job is
re-enqueued by the sweeper, a lost publish is caught up from the event log by
subscribers (they detect the gap in ``seq``). So a Redis failure here is logged, never
raised to the client whose transfer is already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from server.events import Event
from server.settings import Settings

log = logging.getLogger("settle.dispatch")

SETTLE_JOB = "settle_transfer"


def job_id(settings: Settings, transfer_id: str) -> str:
    """arq keys its jobs by id (``arq:job:<id>``, ``arq:in-progress:<id>``): with the
    prefix in the id, deployments sharing one Redis never see each other's jobs."""
    return f"{settings.redis_prefix}:{transfer_id}"


def channel(settings: Settings, account_id: str) -> str:
    return f"{settings.redis_prefix}:events:{account_id}"


class Dispatcher:
    """Redis work that follows a commit: settlement jobs and published events."""

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    async def enqueue_settlement(self, transfer_ids: Iterable[str]) -> None:
        defer_ms = self.settings.settle_delay_ms
        for transfer_id in transfer_ids:
            try:
                await self.redis.enqueue_job(
                    SETTLE_JOB,
                    transfer_id,
                    _job_id=job_id(self.settings, transfer_id),
                    _queue_name=self.settings.queue_name,
                    _defer_by=defer_ms / 1000 if defer_ms else None,
                )
            except (RedisError, OSError) as exc:
                log.warning("enqueue failed, the sweeper will retry: %s %r", transfer_id, exc)

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(channel(self.settings, event.account_id), event.payload)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning(
                "publish of %d events failed, subscribers will catch up: %r", len(events), exc
            )

    async def after_commit(self, events: Sequence[Event], settle: Iterable[str] = ()) -> None:
        await self.enqueue_settlement(settle)
        await self.publish(events)
