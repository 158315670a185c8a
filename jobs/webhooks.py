"""Webhook deliveries: the jobs of their own arq queue (``Settings.webhook_queue_name``),
run by a second ``arq.Worker`` in every ``settle worker``, so a slow or dead receiver
holds only these jobs' slots and never delays settlement.

The flow of one event: its commit (in ``account_events``) → the after-commit nudge
(``server.live.dispatch``: the batch's accounts pushed on the nudges list) → a worker's
router (``route``, a task beside the worker) pops them and pokes each endpoint of their
owners → that endpoint's one ``deliver`` job (running and waiting on its bell, or queued
now): ``fill`` (the cursor moves over the new events, each becoming a delivery, in one
transaction) → each due delivery POSTed in order, signed, to the checked address → its
attempt recorded.
A failed attempt stops the endpoint's round (later deliveries wait behind it, so a
healthy receiver sees each account's events in ``seq`` order) until its retry is due.
The ``sweep`` cron job pokes every endpoint behind (a lost nudge, a due retry, a worker
killed mid-delivery: the delivery is redone with the same ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

from arq import Worker, func
from arq.connections import RedisSettings

from jobs import arq_worker
from server.domain import webhooks as rules
from server.domain.clock import now_us
from server.domain.webhooks import Delivery, Endpoint, EndpointStatus, Outcome
from server.live import webhook_queue
from server.live.webhook_http import Sender
from server.metrics import WEBHOOKS
from server.settings import Settings
from server.store import Conn, Store, open_store
from server.store import webhooks as hooks

log = logging.getLogger("settle.webhooks")

# A delivery job gives its slot back after this long (the sweeper or a nudge starts the
# next), so endpoints with a backlog take turns.
ROUND_S = 30
# A delivery job with nothing left waits this long for its endpoint's next poke before
# it gives its slot back: a busy endpoint's events go out without a queue's pickup.
LINGER_S = 2.0
# The router, with Redis or the database away, tries again after this long; it waits for
# nudges this long at a time (and so stops within it).
ROUTER_PAUSE_S = 0.5
ROUTER_WAIT_S = 1.0
# Endpoints one worker delivers to at a time: a slow receiver holds one slot, up to
# SETTLE_WEBHOOK_TIMEOUT_S per attempt, and settlement's slots none.
MAX_JOBS = 32
FILL_BATCH = 500
# Attempts recorded per transaction, at most.
RECORD_BATCH = 50


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if "store" not in ctx:
        store = open_store(settings)
        await store.connect()
        ctx["store"], ctx["own_store"] = store, True
    ctx["sender"] = Sender(settings)
    ctx["rng"] = random.Random()
    ctx["router_stop"] = asyncio.Event()
    ctx["router"] = asyncio.create_task(route(ctx), name="settle-webhooks-router")


async def shutdown(ctx: dict[str, Any]) -> None:
    # Stopped between two nudges, not cancelled in the middle of a poke: it waits on the
    # list at most ROUTER_WAIT_S. A worker stopped while it was starting (connecting to
    # the database) has only what its startup got to.
    if "router" in ctx:
        ctx["router_stop"].set()
        try:
            await asyncio.wait_for(ctx["router"], ROUTER_WAIT_S + 5)
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.warning("webhooks router: %r", exc)
    if "sender" in ctx:
        await ctx["sender"].close()
    if ctx.get("own_store"):
        await ctx["store"].disconnect()


async def route(ctx: dict[str, Any]) -> None:
    """Until stopped: pop the accounts nudged after commits, poke their owners'
    endpoints. Every worker runs one; a nudge goes to one of them."""
    settings: Settings = ctx["settings"]
    stop: asyncio.Event = ctx["router_stop"]
    while not stop.is_set():
        try:
            accounts = await webhook_queue.next_nudges(ctx["redis"], settings, ROUTER_WAIT_S)
            if accounts:
                found = await hooks.endpoints_for(ctx["store"], accounts)
                await webhook_queue.poke(ctx["redis"], settings, found)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Redis or the database away: the sweeper finds what this misses.
            log.warning("webhooks router: %r", exc)
            await asyncio.sleep(ROUTER_PAUSE_S)


async def deliver(ctx: dict[str, Any], endpoint_id: str) -> int:
    """The endpoint's one job: make deliveries of its new events, send the due ones in
    order; returns how many were delivered. Ends when nothing is left that is due, or
    after ``ROUND_S`` (the sweeper brings it back)."""
    settings: Settings = ctx["settings"]
    store: Store = ctx["store"]
    redis = ctx["redis"]
    loop = asyncio.get_running_loop()
    ends = loop.time() + ROUND_S
    # Shorter than a stopping worker waits for its jobs (SETTLE_JOB_TIMEOUT_S): a job
    # waiting on its bell never outlives its worker's Redis pool.
    linger_s = min(LINGER_S, settings.job_timeout_s / 2)
    sent = 0
    while loop.time() < ends:
        await webhook_queue.clear_bell(redis, settings, endpoint_id)
        while await store.transaction(lambda conn: hooks.fill(conn, endpoint_id, now_us())) >= (
            FILL_BATCH
        ):
            pass
        endpoint = await hooks.endpoint(store, endpoint_id)
        if endpoint is None or endpoint.status is not EndpointStatus.ENABLED:
            return sent
        due = await hooks.pending(store, endpoint_id)
        blocked = False
        tried: list[Tried] = []
        for delivery in due:
            if (delivery.next_attempt_at or 0) > now_us() or loop.time() >= ends:
                blocked = True
                break
            tried.append(await attempt(ctx, endpoint, delivery))
            if not tried[-1].outcome.ok:
                blocked = True
                break
            sent += 1
            if len(tried) >= RECORD_BATCH:
                await record(ctx, tried)
                tried = []
        await record(ctx, tried)
        if blocked:
            return sent
        if len(due) < 100 and not await webhook_queue.wait_bell(
            redis, settings, endpoint_id, linger_s
        ):
            return sent
    return sent


@dataclasses.dataclass(frozen=True)
class Tried:
    """An attempt made, to be recorded."""

    delivery: Delivery
    outcome: Outcome
    at: int
    next_at: int | None


async def attempt(ctx: dict[str, Any], endpoint: Endpoint, delivery: Delivery) -> Tried:
    """One signed POST of ``delivery``, and when to try again if it failed."""
    settings: Settings = ctx["settings"]
    at = now_us()
    payload = delivery.payload.encode()
    headers = rules.headers(endpoint.secrets_at(at), delivery.id, at // 1_000_000, payload)
    if delivery.attempts == 0:
        WEBHOOKS.queue_age_seconds.observe(max(at - delivery.created_at, 0) / 1e6)
    sender: Sender = ctx["sender"]
    outcome = await sender.post(endpoint.url, headers, payload)
    WEBHOOKS.attempts.labels(outcome.label).inc()
    WEBHOOKS.attempt_seconds.observe(outcome.duration_us / 1e6)
    next_at = None
    if not outcome.ok:
        wait_s = rules.retry_in_s(
            settings.webhook_retry_schedule, delivery.attempts + 1, ctx["rng"]
        )
        next_at = None if wait_s is None else at + int(wait_s * 1_000_000)
        log.info(
            "webhook delivery=%s endpoint=%s failed: %s",
            delivery.id,
            endpoint.id,
            outcome.error or f"HTTP {outcome.status_code}",
        )
    return Tried(delivery, outcome, now_us(), next_at)


async def record(ctx: dict[str, Any], tried: list[Tried]) -> None:
    """Attempts made, recorded in one transaction (a healthy receiver's deliveries cost
    one commit per batch, not one each). A worker killed before this redoes them, with
    the same webhook-ids: at least once."""
    if not tried:
        return
    disable_after = ctx["settings"].webhook_disable_after_s * 1_000_000

    async def body(conn: Conn) -> list[str]:
        reasons = []
        for t in tried:
            why = await hooks.record(conn, t.delivery, t.outcome, t.at, t.next_at, disable_after)
            if why is not None:
                reasons.append(why)
        return reasons

    for reason in await ctx["store"].transaction(body):
        WEBHOOKS.disabled.inc()
        log.warning("webhook endpoint %s disabled: %s", tried[0].delivery.endpoint_id, reason)


async def sweep(ctx: dict[str, Any]) -> int:
    """Poke every endpoint with work left (events past its cursor, a retry due), and
    keep the flag that has commits nudge at all in step with the database."""
    settings: Settings = ctx["settings"]
    store: Store = ctx["store"]
    await webhook_queue.set_enabled(ctx["redis"], settings, await hooks.any_enabled(store))
    behind = await hooks.behind(store, now_us())
    await webhook_queue.poke(ctx["redis"], settings, behind)
    return len(behind)


def create_webhook_worker(
    settings: Settings,
    redis_settings: RedisSettings,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    store: Store | None = None,
) -> Worker:
    """The arq worker of the webhooks queue (``settle worker`` runs it beside settlement's)."""
    return arq_worker.build(
        settings,
        redis_settings,
        queue_name=settings.webhook_queue_name,
        functions=[
            # A round's attempts each end within the receiver's timeout; a job whose
            # worker died is run again once its timeout passed, redoing its delivery.
            func(
                deliver,
                name=webhook_queue.DELIVER_JOB,
                timeout=ROUND_S + LINGER_S + settings.webhook_timeout_s + 30,
                max_tries=1000,
            ),
        ],
        sweep=sweep,
        sweep_name=f"{settings.redis_prefix}:webhooks:sweep",
        startup=startup,
        shutdown=shutdown,
        max_jobs=MAX_JOBS,
        burst=burst,
        handle_signals=handle_signals,
        store=store,
    )
