"""After a commit: ring the settlement partitions that have new work, and publish the
committed events on Redis.

Both are best-effort by design. The database already holds the truth: a lost ring is
healed by the sweeper (which rings the partitions of transfers pending past their due
time), a lost publish is caught up from the event log by subscribers (they detect the
gap in ``seq``). So a Redis failure here is logged, never raised to the client whose
transfer is already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from arq.connections import ArqRedis
from redis.exceptions import NoScriptError, RedisError

from server.batching import Batched
from server.domain.events import Event
from server.live import webhook_queue
from server.live.doorbell import Doorbells, new_token
from server.settings import Settings

log = logging.getLogger("settle.dispatch")

DRAIN_JOB = "drain"


def drain_job_id(settings: Settings, partition: int, token: str) -> str:
    """arq keys its jobs by id: with the prefix in it, deployments sharing one Redis never
    see each other's jobs; with a fresh suffix, every drainer queued is a job of its own
    (one handed back keeps its lease's token)."""
    return f"{settings.redis_prefix}:drain:{partition}:{token}:{new_token()}"


def channel(settings: Settings, account_id: str) -> str:
    return f"{settings.redis_prefix}:events:{account_id}"


def ended_channel(settings: Settings) -> str:
    """Where ended credentials are announced to every web process (``Hub``)."""
    return f"{settings.redis_prefix}:ended"


class Dispatcher:
    """Redis work that follows a commit: partitions rung and events published.

    Concurrent commits share one round trip: what they hand over while one pipeline is
    in flight goes together in the next (as the store's transactions do). A partition
    with no drainer gets one: a job queued through arq (``start_drainer``)."""

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.bells = Doorbells(redis, settings)
        self._handed = Batched(self._send_batch)

    async def after_commit(self, events: Sequence[Event], settle: Iterable[int] = ()) -> None:
        """Publish ``events`` and ring the partitions in ``settle``; returns once they
        were handed to Redis (or that failed, which is logged: the sweeper and the
        subscribers catch up)."""
        partitions = sorted(set(settle))
        if not events and not partitions:
            return
        await self._handed((events, partitions))

    async def publish(self, events: Sequence[Event]) -> None:
        await self.after_commit(events)

    async def ring(self, partitions: Iterable[int]) -> None:
        """Ring partitions (the sweeper's, for transfers pending past their due time)."""
        await self.after_commit((), partitions)

    async def credential_ended(self, credential: str) -> None:
        """Tell every web process that ``credential`` ("token:<digest>",
        "session:<digest>") ended: they close the streams opened with it (4401).

        Best-effort like the rest: if Redis is unreachable now, every web process's
        subscription is broken too, and on reconnecting each checks its streams'
        credentials against the database (``Hub``)."""
        try:
            await self.redis.publish(ended_channel(self.settings), credential)
        except (RedisError, OSError) as exc:
            log.warning("credential end not announced; hubs recheck on reconnect: %r", exc)

    async def start_drainer(
        self, partition: int, token: str, defer_s: float = 0, bounced: int = 0
    ) -> None:
        """Queue the job that drains ``partition`` under the lease ``token`` (arq's own
        enqueue: any worker picks it up at its next look at the queue); ``bounced``: how
        often busy workers handed it back (``jobs.drainer.drain``)."""
        await self.redis.enqueue_job(
            DRAIN_JOB,
            partition,
            token,
            bounced,
            _job_id=drain_job_id(self.settings, partition, token),
            _queue_name=self.settings.queue_name,
            _defer_by=defer_s or None,
        )

    async def close(self) -> None:
        """Wait for what is being sent."""
        await self._handed.close()

    async def _send_batch(self, batch: list[tuple[Sequence[Event], list[int]]]) -> list[None]:
        """What concurrent commits handed over, in one round trip (``server.batching``)."""
        events = [e for item in batch for e in item[0]]
        partitions = sorted({p for item in batch for p in item[1]})
        await self._send(partitions, events)
        return [None] * len(batch)

    async def _send(self, partitions: Sequence[int], events: Sequence[Event]) -> None:
        """Partitions rung and events published, in one pipeline; then a drainer queued
        for each rung partition that had none."""
        accounts = sorted({e.account_id for e in events})
        try:
            replies = await self._pipeline(partitions, events, accounts)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # A Redis that lost its script cache (restarted): load the scripts, ring
                # and nudge again (both harmless twice); the events went out.
                await self.redis.script_load(self.bells.ring_script)
                await self.redis.script_load(webhook_queue.NUDGE_SCRIPT)
                replies = await self._pipeline(partitions, (), accounts)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            for partition, token in zip(partitions, replies, strict=False):
                if token is not None:
                    await self.start_drainer(partition, _text(token))
        except (RedisError, OSError) as exc:
            log.warning(
                "after commit: %d partitions not rung and %d events not sent, the sweeper"
                " and the subscribers will catch up: %r",
                len(partitions),
                len(events),
                exc,
            )

    async def _pipeline(
        self, partitions: Sequence[int], events: Sequence[Event], accounts: Sequence[str]
    ) -> list[object]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                # EVALSHA itself: a pipeline given a Script object asks SCRIPT EXISTS
                # first, a round trip of its own on every execute.
                sha, keys, args = self.bells.ring_args(partition)
                pipe.evalsha(sha, len(keys), *keys, *args)
            for event in events:
                pipe.publish(channel(self.settings, event.account_id), event.payload)
            if accounts:
                # Webhooks: these accounts nudged, if any endpoint is enabled.
                keys = webhook_queue.nudge_keys(self.settings)
                pipe.evalsha(webhook_queue.NUDGE_SHA, len(keys), *keys, *accounts)
            replies: list[object] = await pipe.execute(raise_on_error=False)
        return replies


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
