"""The arq worker: settlement drainers and the sweeper.

The flow of one transfer here: a ring of its partition (after the acceptance commit)
wakes that partition's drainer (``jobs.drainer.drain``, a long-lived arq job) or queues
one → ``transfers.settle`` (one transaction for a batch of the partition's due
transfers, then publish their events). A plain ``arq.Worker``: its queue holds only
drainers being started and the sweeper's runs, so it looks at it every
``SETTLE_WORKER_POLL_MS``; a running drainer is woken by the ring itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from arq import Worker, func
from arq.connections import RedisSettings
from redis.exceptions import RedisError

from jobs import arq_worker
from jobs.drainer import Crew, drain
from server.domain.clock import now_us
from server.domain.settlement import partition_of
from server.live.dispatch import DRAIN_JOB, Dispatcher
from server.redisbox import redis_settings
from server.settings import Settings
from server.store import Store, open_store, reads, settlement
from server.usecases import transfers
from server.usecases.context import Context

log = logging.getLogger("settle.worker")

RESTART_PAUSE_S = 0.2
# A drainer's job may run this much past its lifetime (a batch in flight, its handover).
DRAIN_MARGIN_S = 60


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if "store" not in ctx:
        store = open_store(settings)
        await store.connect()
        ctx["store"], ctx["own_store"] = store, True
    ctx["dispatch"] = Dispatcher(ctx["redis"], settings)
    ctx["usecases"] = Context(settings, ctx["store"], ctx["dispatch"])
    ctx["crew"] = crew = Crew(ctx["redis"], settings)
    ctx["heartbeat"] = asyncio.create_task(crew.beat(), name="settle-worker-heartbeat")


async def shutdown(ctx: dict[str, Any]) -> None:
    # A worker stopped while it was starting (connecting to the database) has only what
    # its startup got to.
    if "heartbeat" in ctx:
        ctx["heartbeat"].cancel()
        await asyncio.gather(ctx["heartbeat"], return_exceptions=True)
    if "dispatch" in ctx:
        await ctx["dispatch"].close()
    if ctx.get("own_store"):
        await ctx["store"].disconnect()


async def sweep(ctx: dict[str, Any]) -> int:
    """Fail the transfers pending past their expiry (``SETTLE_PENDING_TTL_S``), and ring
    the partitions of those pending well past their due time: their ring was lost (a
    crash between commit and ring, a Redis restart without persistence), or their
    drainer died. Transfers stuck three times as long are settled here directly.

    Runs safely in any number of workers: a ring starts at most one drainer per
    partition, and settlement is exactly once in the database anyway."""
    settings: Settings = ctx["settings"]
    store: Store = ctx["store"]
    usecases: Context = ctx["usecases"]
    parts = settings.settle_partitions
    for partition in _partitions(await reads.expired_slots(store, now_us()), parts):
        with contextlib.suppress(settlement.Busy):  # being settled: next sweep
            expired = await transfers.expire(usecases, partition)
            log.warning("sweeper: %d transfers expired while pending", len(expired) // 2)
    due = now_us() - (settings.settle_delay_ms + settings.sweep_after_ms) * 1000
    late = _partitions(await reads.pending_slots_older_than(store, due), parts)
    if not late:
        return 0
    log.warning("sweeper: ringing partitions %s for transfers pending too long", late)
    await ctx["dispatch"].ring(late)
    very_late = now_us() - (settings.settle_delay_ms + 3 * settings.sweep_after_ms) * 1000
    for partition in _partitions(await reads.pending_slots_older_than(store, very_late), parts):
        with contextlib.suppress(settlement.Busy):  # a drainer is at it: next sweep
            await transfers.settle(usecases, partition, wait=False)
    return len(late)


def _partitions(slots: list[int], partitions: int) -> list[int]:
    return sorted({partition_of(slot, partitions) for slot in slots})


def create_worker(
    settings: Settings,
    redis_settings: RedisSettings,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    store: Store | None = None,
) -> Worker:
    """The arq worker for these settings (``settle worker`` runs it; tests burst it)."""
    return arq_worker.build(
        settings,
        redis_settings,
        queue_name=settings.queue_name,
        functions=[
            func(
                drain,
                name=DRAIN_JOB,
                timeout=settings.drain_lifetime_s + DRAIN_MARGIN_S,
                # A drainer that fails is not retried: its partition's next ring (or the
                # sweeper's) starts another. One whose worker died is run again once
                # its job's timeout passed, and finds the lease taken or free.
                max_tries=2,
            )
        ],
        sweep=sweep,
        sweep_name=f"{settings.redis_prefix}:sweep",
        startup=startup,
        shutdown=shutdown,
        # Every partition may drain in one worker, with the sweeper beside them (the
        # drainers spread over the workers themselves: ``jobs.drainer.Crew``).
        max_jobs=settings.settle_partitions + 2,
        burst=burst,
        handle_signals=handle_signals,
        store=store,
        job_timeout=settings.job_timeout_s,
    )


async def stop_worker(worker: Worker, main: asyncio.Task[Any], grace_s: float) -> None:
    """Stop a worker started as ``main = create_task(worker.main())``: stop polling, let
    the jobs in flight finish (at most ``grace_s``; idle drainers end at once), then
    close its Redis pool.

    arq's own ``close()`` cancels running jobs and then re-raises their CancelledError,
    which would skip closing the pool. A job cancelled here rolls its transaction back,
    and the sweeper runs it again.
    """
    main.cancel()
    await asyncio.gather(main, return_exceptions=True)
    crew = worker.ctx.get("crew")
    if isinstance(crew, Crew):
        crew.stop()  # drainers waiting for a ring have nothing to finish
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        await asyncio.wait(running, timeout=grace_s)
    # With Redis gone, finishing the jobs and closing the pool fail too: nothing to keep.
    with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
        await worker.close()


async def run_worker(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Run the settlement worker and the webhooks worker (``jobs.webhooks``, its own
    queue) until ``stop`` is set, each restarted whenever Redis goes away."""
    from jobs.webhooks import create_webhook_worker

    await asyncio.gather(
        _keep_running(create_worker, settings, store, stop),
        _keep_running(create_webhook_worker, settings, store, stop),
    )


async def _keep_running(
    factory: Callable[..., Worker], settings: Settings, store: Store, stop: asyncio.Event
) -> None:
    """Run a worker until ``stop`` is set, starting a fresh one whenever Redis goes away.

    arq's worker ends on the first Redis error of its polling loop. A restart of Redis
    must not take the workers down with it (nothing would settle until someone restarted
    them), so a lost connection here means: close this worker, start another, which
    waits for Redis to answer again (``redis_settings``: 30 tries, a second apart).
    """
    assert settings.redis_url is not None
    while not stop.is_set():
        worker = factory(
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
