"""The settlement drainer: one arq job per partition at a time, settling what falls due
there for as long as it lasts (``SETTLE_DRAIN_LIFETIME_S``), then handing over to a
fresh job. A worker's cost is per batch of transfers, not per transfer.

The flow: a commit rings its partition's doorbell (``server.live.doorbell``); the
drainer, blocked on it (BLPOP), wakes at once, settles one batch after another
(``usecases.transfers.settle``) until nothing is due, then waits for the next ring, the
next transfer's due time, or the time to renew its lease. A partition with no drainer
gets one from the ring itself (the ringer queues a job), so no wake is ever lost; a
drainer whose worker died loses its lease within seconds, and the next ring (or the
sweeper's) starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from typing import Any, cast

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from server.domain.clock import now_us
from server.live.dispatch import Dispatcher
from server.live.doorbell import LEASE_MS, new_token
from server.settings import Settings
from server.store import settlement, unavailable
from server.usecases import transfers

log = logging.getLogger("settle.worker")

# The lease is renewed this often (well within LEASE_MS).
RENEW_S = LEASE_MS / 3000
# After a failure to reach the database, wait this long (doubling, at most 2 s).
RETRY_S = 0.05
# Workers say they are alive this often, and count as alive for this long after.
BEAT_S = 1.0
ALIVE_MS = 5000
# A drain job handed back this many times is taken by the next worker whatever its load.
MAX_BOUNCES = 3


def hand_back_s(settings: Settings) -> float:
    """How long a job handed back (its worker is full) waits before any worker may take
    it: a random part of two looks at the queue. Each worker looks on a fixed grid of its
    own (arq's poll), and with a fixed delay a worker whose grid ran just behind a busy
    one's never got a job handed back (measured: 4 workers, an idle one took a waiting
    drain job twice in 5 s; one partition unsettled all that time)."""
    return random.uniform(0.005, 2 * settings.worker_poll_ms / 1000)


async def drain(ctx: dict[str, Any], partition: int, token: str, bounced: int = 0) -> int:
    """Drain ``partition`` under the lease ``token`` (queued by a ring); how many
    transfers it settled. In a burst worker (tests) it stops when nothing is due.

    Drainers spread evenly over the workers (``Crew``): a worker that is not among the
    least busy hands the job back for another worker to take (``bounced`` counts how
    often; after ``MAX_BOUNCES`` any worker takes it, so that no partition waits on
    which worker looks at the queue first), and a drainer whose worker drains two more
    partitions than the least busy one, or more than its share, hands its partition
    over."""
    drainer = Drainer(ctx, partition, token)
    crew: Crew = ctx["crew"]
    room = drainer.burst or bounced >= MAX_BOUNCES or await crew.has_room()
    # From here to the claim's answer this worker counts the partition as its own, so
    # that jobs starting side by side cannot all find room.
    if not room:
        await drainer.dispatch.start_drainer(
            partition, token, defer_s=hand_back_s(drainer.settings), bounced=bounced + 1
        )
        return 0
    crew.take(partition)
    try:
        if not await drainer.bells.claim(partition, token):
            return 0  # another drainer has the partition (this job was retried, or late)
        await drainer.run()
    except asyncio.CancelledError:
        # Stopping (the worker shuts down): let the partition go, or hand it to a fresh
        # drainer if it was rung meanwhile, instead of leaving it to the lease's expiry.
        with contextlib.suppress(Exception):
            await asyncio.shield(_stop(drainer.dispatch, partition, token))
        raise
    finally:
        crew.drop(partition)
    return drainer.settled


class Crew:
    """This worker among the live ones, and how the partitions spread between them.

    Each worker says, every second and whenever it changes, how many partitions it
    drains: a field of its own in the hash ``{prefix}:workers``, ``<ms>:<count>``; a
    worker silent for ``ALIVE_MS`` is dead (and its field removed). A worker takes a
    drain job only while no live worker drains fewer partitions than it does, and
    below its fair share (the partitions divided by the live workers, rounded up); a
    worker draining two more than the least busy one hands one over. So drainers end up
    at most one apart between workers, however many partitions have work: a worker
    that joins (or comes back) gets its part within a renewal or two."""

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.key = f"{settings.redis_prefix}:workers"
        self.partitions = settings.settle_partitions
        self.id = new_token()
        self.draining: set[int] = set()
        # The tasks telling this worker's new count, kept until done.
        self.telling: set[asyncio.Task[None]] = set()
        # The drainers waiting for a ring (nothing in flight), and whether the worker
        # is stopping: then they let go at once instead of at the end of its grace.
        self.idle: dict[int, asyncio.Task[Any]] = {}
        self.stopping = False

    def stop(self) -> None:
        """The worker is stopping: drainers waiting for a ring let their partitions go
        now (cancelled in their wait, which settles nothing), and one finishing a batch
        lets go instead of waiting again. A batch in flight finishes."""
        self.stopping = True
        for task in self.idle.values():
            task.cancel()

    def take(self, partition: int) -> None:
        self.draining.add(partition)
        self._tell()

    def drop(self, partition: int) -> None:
        if partition in self.draining:
            self.draining.discard(partition)
            self._tell()

    def _tell(self) -> None:
        """Say the new count now (not awaited: the next heartbeat says it anyway)."""
        task = asyncio.get_running_loop().create_task(self._say())
        self.telling.add(task)
        task.add_done_callback(self.telling.discard)

    async def _say(self) -> None:
        """Say this worker's count, and forget the dead."""
        now = int(time.time() * 1000)
        try:
            await cast(
                Awaitable[int], self.redis.hset(self.key, self.id, f"{now}:{len(self.draining)}")
            )
            seen = await self._seen()
            dead = [
                w.decode() for w, said in seen.items() if int(said.split(b":")[0]) < now - ALIVE_MS
            ]
            if dead:
                await cast(Awaitable[int], self.redis.hdel(self.key, *dead))
        except (RedisError, OSError) as exc:
            log.warning("worker heartbeat not sent: %r", exc)

    async def _seen(self) -> dict[bytes, bytes]:
        return await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key))

    async def beat(self) -> None:
        """Forever: say this worker is alive, with its count."""
        while True:
            await self._say()
            await asyncio.sleep(BEAT_S)

    async def _others(self) -> tuple[int, int | None]:
        """The number of live workers, and the fewest partitions another one drains
        (None: this worker is alone)."""
        now = int(time.time() * 1000)
        seen = await self._seen()
        counts = [
            int(count)
            for worker, said in seen.items()
            if worker.decode() != self.id
            for at, count in [said.split(b":")]
            if int(at) >= now - ALIVE_MS
        ]
        return len(counts) + 1, min(counts, default=None)

    async def has_room(self) -> bool:
        """Whether this worker should take one more partition."""
        alive, least = await self._others()
        mine = len(self.draining)
        share = -(-self.partitions // alive)
        return mine < share and (least is None or mine <= least)

    async def leaving(self, partition: int) -> bool:
        """Whether ``partition``'s drainer should hand it over: this worker drains two
        more partitions than the least busy one, or more than its share. Only as many
        leave as are too many: one that leaves stops counting at once, before any other
        drainer of this worker asks."""
        alive, least = await self._others()
        mine = len(self.draining)
        share = -(-self.partitions // alive)
        if mine <= share and (least is None or mine < least + 2):
            return False
        self.drop(partition)
        return True


class Drainer:
    """One partition's drainer, while its job runs."""

    def __init__(self, ctx: dict[str, Any], partition: int, token: str) -> None:
        self.settings: Settings = ctx["settings"]
        self.usecases = ctx["usecases"]
        self.dispatch: Dispatcher = ctx["dispatch"]
        self.bells = self.dispatch.bells
        self.burst = bool(ctx.get("burst"))
        self.crew: Crew = ctx["crew"]
        self.partition, self.token = partition, token
        self.loop = asyncio.get_running_loop()
        self.started = self.renewed = self.loop.time()
        self.settled = 0
        self.pause = RETRY_S
        self.task = asyncio.current_task()

    async def run(self) -> None:
        """Settle, wait for a ring, settle..., until the lease is lost, the lifetime is
        over (then a successor takes over), or, in a burst, nothing is due."""
        while True:
            done = await self._settle()
            if not await self._renewed():
                return
            if done is None or done.full:
                continue  # more may be due at once
            if self.burst and done.next_due is None:
                if await self.bells.let_go(self.partition, self.token):
                    return
                await self.bells.wait(self.partition, 0)  # take the ring that came, drain on
                continue
            if not self.burst and self.loop.time() - self.started >= self.settings.drain_lifetime_s:
                await _hand_over(self.dispatch, self.partition, self.token)
                return
            if self.crew.stopping:
                await _stop(self.dispatch, self.partition, self.token)
                return
            wait = _wait_s(self.settings, done.next_due, self.renewed, self.loop.time())
            if self.task is not None:
                self.crew.idle[self.partition] = self.task
            try:
                await self.bells.wait(self.partition, wait)
            finally:
                self.crew.idle.pop(self.partition, None)

    async def _settle(self) -> settlement.Settled | None:
        """One batch; None when the database could not be reached (nothing was written:
        it is tried again, a little later each time)."""
        try:
            done = await transfers.settle(self.usecases, self.partition)
        except Exception as exc:
            if not unavailable(exc):
                raise
            log.warning("partition %d: settlement failed, retrying: %r", self.partition, exc)
            await asyncio.sleep(self.pause)
            self.pause = min(self.pause * 2, 2.0)
            return None
        self.pause = RETRY_S
        self.settled += len({e.transfer_id for e in done.events})
        return done

    async def _renewed(self) -> bool:
        """Whether this drainer drains on: its lease renewed when due, and handed over
        (to a job another worker may take) when its worker is crowded."""
        now = self.loop.time()
        if now - self.renewed < RENEW_S:
            return True
        if not await self.bells.renew(self.partition, self.token):
            log.warning("partition %d: lease lost; another drainer has it", self.partition)
            return False
        self.renewed = now
        if not self.burst and await self.crew.leaving(self.partition):
            await _hand_over(self.dispatch, self.partition, self.token, hand_back_s(self.settings))
            return False
        return True


def _wait_s(settings: Settings, next_due: int | None, renewed: float, now: float) -> float:
    """How long to wait for a ring: until the next transfer falls due, or the lease
    wants renewing, whichever comes first."""
    wait = RENEW_S - (now - renewed)
    if next_due is not None:
        due_in = (next_due + settings.settle_delay_ms * 1000 - now_us()) / 1_000_000
        wait = min(wait, due_in)
    return max(wait, 0.001)


async def _hand_over(dispatch: Dispatcher, partition: int, token: str, defer_s: float = 0) -> None:
    """A drainer queues its successor under the same lease (at the end of its life, or
    to move to a less busy worker)."""
    successor = new_token()
    if await dispatch.bells.hand_over(partition, token, successor):
        await dispatch.start_drainer(partition, successor, defer_s)


async def _stop(dispatch: Dispatcher, partition: int, token: str) -> None:
    if not await dispatch.bells.let_go(partition, token):
        await _hand_over(dispatch, partition, token)
