"""What settle's two arq workers (settlement's, ``jobs.worker``; the webhooks',
``jobs.webhooks``) are built from alike: a sweeper cron job, the context every job
gets, polling, and no stored results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq import Worker, cron
from arq.connections import RedisSettings
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.worker import Function

from server.settings import Settings
from server.store import Store


def build(
    settings: Settings,
    redis_settings: RedisSettings,
    *,
    queue_name: str,
    functions: Sequence[Function],
    sweep: WorkerCoroutine,
    sweep_name: str,
    startup: StartupShutdown,
    shutdown: StartupShutdown,
    max_jobs: int,
    burst: bool,
    handle_signals: bool,
    store: Store | None,
    **options: Any,
) -> Worker:
    """A worker of ``queue_name`` running ``functions``, with ``sweep`` every
    ``SETTLE_SWEEP_INTERVAL_S`` (not in a burst: a burst worker stops when the queue is
    empty, which a scheduled cron job never is). Its jobs' context holds the settings
    (and ``store``, when the caller lends one; startup opens one otherwise)."""
    every = max(settings.sweep_interval_s, 1)
    sweeper = cron(
        sweep,
        name=sweep_name,
        second=set(range(0, 60, every)),
        run_at_startup=True,
        unique=True,
        timeout=60,
    )
    ctx: dict[str, Any] = {"settings": settings, "burst": burst}
    if store is not None:
        ctx["store"] = store
    return Worker(
        functions=list(functions),
        cron_jobs=[] if burst else [sweeper],
        queue_name=queue_name,
        redis_settings=redis_settings,
        on_startup=startup,
        on_shutdown=shutdown,
        ctx=ctx,
        burst=burst,
        handle_signals=handle_signals,
        poll_delay=0 if burst else settings.worker_poll_ms / 1000,
        max_jobs=max_jobs,
        # No stored results: job ids are unique anyway.
        keep_result=0,
        health_check_key=f"{queue_name}:health-check",
        **options,
    )
