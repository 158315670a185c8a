"""After a commit: enqueue settlement jobs and publish the committed events on Redis.

Both are best-effort by design. The database already holds the truth: a lost job is
re-enqueued by the sweeper, a lost publish is caught up from the event log by
subscribers (they detect the gap in ``seq``). So a Redis failure here is logged, never
raised to the client whose transfer is already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from server.batching import Batched
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


def wake_channel(settings: Settings) -> str:
    """Published to with each enqueue: idle workers wait on it instead of polling."""
    return f"{settings.redis_prefix}:wake"


def ended_channel(settings: Settings) -> str:
    """Where ended credentials are announced to every web process (``Hub``)."""
    return f"{settings.redis_prefix}:ended"


# arq's enqueue_job (WATCH, EXISTS, then MULTI/EXEC: three round trips) as one script,
# so that a transfer's job and its events leave in one round trip. The same keys, the
# same job encoding, and the same refusal of a job id that is queued or has a result.
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) == 0 then
  redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
  redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
end
"""


class Dispatcher:
    """Redis work that follows a commit: settlement jobs and published events.

    Concurrent commits share one round trip: what they hand over while one pipeline is
    in flight goes together in the next (as the store's transactions do). And the
    transfers of one round trip share one settlement job: any settlement job settles
    every due transfer (``server.settlement``), so one per transfer would mostly find
    nothing left to do.
    """

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._enqueue = redis.register_script(_ENQUEUE)
        self._wake = wake_channel(settings)
        self._handed = Batched(self._send_batch)

    async def after_commit(self, events: Sequence[Event], settle: Iterable[str] = ()) -> None:
        """Publish ``events`` and queue a job that settles ``settle`` (transfer ids);
        returns once they were handed to Redis (or that failed, which is logged: the
        sweeper and the subscribers catch up)."""
        settle = list(settle)
        if not events and not settle:
            return
        await self._handed((events, settle))

    async def publish(self, events: Sequence[Event]) -> None:
        await self.after_commit(events)

    async def enqueue_settlement(self, transfer_ids: Iterable[str]) -> None:
        """A job for each transfer (the sweeper's re-enqueue: a job id already queued or
        running is left alone)."""
        ids = list(transfer_ids)
        if ids:
            await self._send(ids, ())

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

    async def close(self) -> None:
        """Wait for what is being sent."""
        await self._handed.close()

    async def _send_batch(self, batch: list[tuple[Sequence[Event], list[str]]]) -> list[None]:
        """What concurrent commits handed over, in one round trip (``server.batching``)."""
        events = [e for item in batch for e in item[0]]
        # One job for the lot: whichever transfer it names, it settles all that are due.
        first = next(([item[1][0]] for item in batch if item[1]), [])
        await self._send(first, events)
        return [None] * len(batch)

    async def _send(self, transfer_ids: Sequence[str], events: Sequence[Event]) -> None:
        """Jobs for ``transfer_ids`` and ``events`` published, in one pipeline."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._queue_jobs(pipe, transfer_ids)
                for event in events:
                    pipe.publish(channel(self.settings, event.account_id), event.payload)
                replies = await pipe.execute(raise_on_error=False)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # A Redis that lost its script cache (restarted): load it, queue again.
                await self.redis.script_load(_ENQUEUE)
                async with self.redis.pipeline(transaction=False) as pipe:
                    self._queue_jobs(pipe, transfer_ids)
                    await pipe.execute()
            for reply in replies:
                if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                    raise reply
        except (RedisError, OSError) as exc:
            log.warning(
                "after commit: %d jobs and %d events not sent, the sweeper and the"
                " subscribers will catch up: %r",
                len(transfer_ids),
                len(events),
                exc,
            )

    def _queue_jobs(self, pipe: Pipeline, transfer_ids: Sequence[str]) -> None:
        now = timestamp_ms()
        score = now + self.settings.settle_delay_ms
        expires = score - now + self.redis.expires_extra_ms
        for transfer_id in transfer_ids:
            job = job_id(self.settings, transfer_id)
            payload = serialize_job(
                SETTLE_JOB, (transfer_id,), {}, None, now, serializer=self.redis.job_serializer
            )
            keys = [job_key_prefix + job, result_key_prefix + job, self.settings.queue_name]
            # EVALSHA itself: a pipeline given a Script object asks SCRIPT EXISTS first,
            # a round trip of its own on every execute.
            args: list[Any] = [*keys, expires, payload, score, job]
            pipe.evalsha(self._enqueue.sha, len(keys), *args)
        if transfer_ids:
            # After the jobs are queued: a woken worker finds them (``jobs.worker``).
            pipe.publish(self._wake, b"")
