"""The arq worker: settlement jobs and the sweeper.

The flow of one transfer here: ``settle_transfer`` (enqueued by the web process after the
acceptance commit) → ``transfers.settle`` (one transaction for a batch of due transfers,
then publish their events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq import Retry, Worker, cron
from arq.connections import RedisSettings, create_pool, log_redis_info
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from server import reads, settlement, transfers
from server.dispatch import SETTLE_JOB, Dispatcher, wake_channel
from server.redisbox import redis_settings
from server.schema import now_us
from server.settings import Settings
from server.store import Store, open_store, unavailable

log = logging.getLogger("settle.worker")

RESTART_PAUSE_S = 0.2


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if "store" not in ctx:
        store = open_store(settings)
        await store.connect()
        ctx["store"], ctx["own_store"] = store, True
    ctx["dispatch"] = Dispatcher(ctx["redis"], settings)
    # PostgreSQL: this worker's settlements take turns, each waiting for the database's
    # settlement lock, instead of all trying it and retrying (``transfers.settle``).
    # SQLite: none; concurrent settlements share the store's group commits.
    ctx["turn"] = None if ctx["store"].is_sqlite else asyncio.Lock()


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["dispatch"].close()
    if ctx.get("own_store"):
        await ctx["store"].disconnect()


async def settle_transfer(ctx: dict[str, Any], transfer_id: str) -> int:
    """Settle one transfer, and with it any other due pending ones (group commit).

    Idempotent: a second run, or a run after another job already settled this transfer
    in its batch, settles nothing. Returns how many transfers this run settled.
    """
    settings: Settings = ctx["settings"]
    try:
        events = await transfers.settle(
            ctx["store"], ctx["dispatch"], settings, transfer_id, turn=ctx.get("turn")
        )
    except settlement.Busy:
        # Another settlement transaction was running (PostgreSQL): try again shortly;
        # that one has likely settled this transfer in its batch by then.
        raise Retry(defer=0.05) from None
    except Exception as exc:
        if unavailable(exc):  # the database is down or restarting: nothing was written
            raise Retry(defer=0.5) from exc
        raise
    settled = len(events) // 2
    if settled:
        log.info("settled %d transfers (job for %s)", settled, transfer_id)
    return settled


async def sweep(ctx: dict[str, Any]) -> int:
    """Fail the transfers pending past their expiry (``SETTLE_PENDING_TTL_S``), and
    re-enqueue those pending well past their due time: their job was lost (a crash
    between commit and enqueue, or a Redis restart without persistence).

    Runs safely in any number of workers: enqueueing uses the transfer's job id, which
    arq refuses to queue twice, and settlement is exactly once in the database anyway.
    Transfers stuck three times as long (their job id held by a killed worker's job,
    say) are settled here directly rather than wait on arq.
    """
    settings: Settings = ctx["settings"]
    store: Store = ctx["store"]
    if await reads.any_expired(store, now_us()):
        with contextlib.suppress(settlement.Busy):  # a settlement runs: next sweep
            expired = await transfers.expire(store, ctx["dispatch"])
            log.warning("sweeper: %d transfers expired while pending", len(expired) // 2)
    due = now_us() - (settings.settle_delay_ms + settings.sweep_after_ms) * 1000
    stuck = await reads.pending_older_than(store, due)
    if not stuck:
        return 0
    log.warning("sweeper: re-enqueueing %d pending transfers", len(stuck))
    await ctx["dispatch"].enqueue_settlement(stuck)
    very_late = now_us() - (settings.settle_delay_ms + 3 * settings.sweep_after_ms) * 1000
    for transfer_id in await reads.pending_older_than(store, very_late):
        with contextlib.suppress(settlement.Busy):  # another one is settling: next sweep
            await transfers.settle(store, ctx["dispatch"], settings, transfer_id, 1, 0)
    return len(stuck)


# arq's claim of a job (WATCH the in-progress key; EXISTS, ZSCORE; MULTI, PSETEX, EXEC:
# four round trips, 45% of a busy worker's time at 500 transfers/s) as one script: the same keys,
# the same refusals (running elsewhere, no longer queued, queued for later), atomic.
_CLAIM = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('psetex', KEYS[1], ARGV[3], '1')
return score
"""


class WakingWorker(Worker):
    """arq's worker, woken when there is work instead of polling every few milliseconds.

    arq polls its queue every ``poll_delay``: 2 ms kept pickup fast but cost ~11% of a
    core doing nothing. Here the loop looks at the queue, then waits for whichever comes
    first: a wake published with each enqueue (``Dispatcher``), one of its own jobs
    ending (a retry is re-queued for later, a slot frees up), the next deferred job's due
    time (retries, the sweeper's cron runs), or ``idle_poll_s``. Wakes are at-most-once
    like all pub/sub: the last two heal a lost one, and the sweeper a lost job. Job
    semantics are arq's own (``_poll_iteration``: claim, run, retry, cron, health).
    """

    def __init__(self, *args: Any, wake_channel: str, idle_poll_s: float, **kwargs: Any) -> None:
        # arq's cron looks max(poll_delay, 0.5) * 2 ahead and queues its runs deferred
        # to their time, which the wait below wakes for.
        super().__init__(*args, poll_delay=idle_poll_s, **kwargs)
        self.wake_channel = wake_channel
        self.idle_poll_s = idle_poll_s
        self._woken = asyncio.Event()
        self.listening = asyncio.Event()
        self._claim: AsyncScript | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs`` (arq 0.28, pinned), each claim one round trip."""
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM)
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            score = await self._claim(
                keys=[in_progress_key_prefix + job_id, self.queue_name],
                args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)],
            )
            if score is None:  # running elsewhere, finished, or queued for later
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def main(self) -> None:
        if self.burst:  # tests: arq's own loop, which returns when the queue is empty
            await super().main()
            return
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        listener = asyncio.create_task(self._listen(), name="settle-worker-wake")
        try:
            while True:
                # Cleared before looking: a wake that comes while we look is not lost.
                self._woken.clear()
                await self._poll_iteration()
                # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a
                # cancellation (stop_worker's) that lands as the wake does.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(await self._until_due()):
                        await self._woken.wait()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _until_due(self) -> float:
        """Seconds until the first job queued for later is due, at most ``idle_poll_s``.

        Jobs already due but not started here are running (here or in another worker) or
        wait for a free slot (a job of ours ending wakes us)."""
        now = timestamp_ms()
        first = await self.pool.zrangebyscore(
            self.queue_name, min=f"({now}", max="+inf", start=0, num=1, withscores=True
        )
        if not first:
            return self.idle_poll_s
        return min(max((float(first[0][1]) - now) / 1000, 0.0), self.idle_poll_s)

    def _release_sem_dec_counter_on_complete(self) -> None:
        # Called as each job's task ends: it may have re-queued itself (Retry) or freed
        # the slot a due job waits for.
        super()._release_sem_dec_counter_on_complete()
        self._woken.set()

    async def _listen(self) -> None:
        """Set ``_woken`` on each wake, reconnecting (with backoff) if the subscription
        breaks. The confirmation of a (re)subscription wakes too: what was published
        before it may be lost."""
        delay = 0.05
        while True:
            pubsub = self.pool.pubsub()
            try:
                await pubsub.subscribe(self.wake_channel)
                async for _ in pubsub.listen():
                    self.listening.set()
                    self._woken.set()
                    delay = 0.05
            except (RedisError, OSError) as exc:
                if self.listening.is_set():
                    log.warning("wake subscription lost, polling until it is back: %r", exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def create_worker(
    settings: Settings,
    redis_settings: RedisSettings,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    store: Store | None = None,
) -> Worker:
    """The arq worker for these settings (``settle worker`` runs it; tests burst it)."""
    every = max(settings.sweep_interval_s, 1)
    sweeper = cron(
        sweep,
        name=f"{settings.redis_prefix}:sweep",
        second=set(range(0, 60, every)),
        run_at_startup=True,
        unique=True,
        timeout=60,
    )
    return WakingWorker(
        functions=[settle_transfer],
        # A burst worker stops when the queue is empty, which a scheduled cron job never is.
        cron_jobs=[] if burst else [sweeper],
        queue_name=settings.queue_name,
        redis_settings=redis_settings,
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": settings} if store is None else {"settings": settings, "store": store},
        burst=burst,
        handle_signals=handle_signals,
        # Woken by each enqueue (a queued job starts within ~1 ms); burst: arq's loop.
        wake_channel=wake_channel(settings),
        idle_poll_s=settings.worker_poll_ms / 1000 if not burst else 0,
        job_timeout=settings.job_timeout_s,
        # No stored results: a job id is free again as soon as its job ends, so the
        # sweeper is never blocked by a stale arq:result key.
        keep_result=0,
        max_tries=1000,
        max_jobs=20,
        health_check_key=f"{settings.queue_name}:health-check",
    )


async def stop_worker(worker: Worker, main: asyncio.Task[Any], grace_s: float) -> None:
    """Stop a worker started as ``main = create_task(worker.main())``: stop polling, let
    the jobs in flight finish (at most ``grace_s``), then close its Redis pool.

    arq's own ``close()`` cancels running jobs and then re-raises their CancelledError,
    which would skip closing the pool. A job cancelled here rolls its transaction back,
    and the sweeper runs it again.
    """
    main.cancel()
    await asyncio.gather(main, return_exceptions=True)
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        await asyncio.wait(running, timeout=grace_s)
    # With Redis gone, finishing the jobs and closing the pool fail too: nothing to keep.
    with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
        await worker.close()


async def run_worker(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Run a worker until ``stop`` is set, starting a fresh one whenever Redis goes away.

    arq's worker ends on the first Redis error of its polling loop. A restart of Redis
    must not take the workers down with it (nothing would settle until someone restarted
    them), so a lost connection here means: close this worker, start another, which
    waits for Redis to answer again (``redis_settings``: 30 tries, a second apart).
    """
    assert settings.redis_url is not None
    while not stop.is_set():
        worker = create_worker(
            settings,
            redis_settings(settings, settings.redis_url),
            handle_signals=False,
            store=store,
        )
        main = asyncio.create_task(worker.main())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([main, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        failure = main.exception() if main.done() and not main.cancelled() else None
        await stop_worker(worker, main, settings.job_timeout_s)
        if failure is None:
            continue
        if not isinstance(failure, (RedisError, OSError)):
            raise failure
        log.warning("lost Redis (%r): starting a new worker", failure)
        await asyncio.sleep(RESTART_PAUSE_S)


assert SETTLE_JOB == settle_transfer.__name__
