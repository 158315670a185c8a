"""Prometheus metrics: the web process's and the settlement's.

The web app has a registry per app instance (tests build many apps in one process);
settlement metrics live in one registry per process (``SETTLEMENT``), shown by the app's
``/metrics`` when the worker runs in the same process (``settle run``) and served on
``SETTLE_METRICS_PORT`` by a separate ``settle worker``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.domain.events import Header
from server.domain.model import Transfer

settle_log = logging.getLogger("settle.settlement")

# Milliseconds matter here: the product's promise is a window of a few of them.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
# How often the loop-lag probe wakes: ~100 cheap wake-ups a second.
LAG_PROBE_S = 0.01


class Metrics:
    """The web process's metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.accepted = Counter("settle_transfers_accepted", "Transfers accepted", registry=r)
        self.cancelled = Counter("settle_transfers_cancelled", "Transfers cancelled", registry=r)
        self.rejections = Counter(
            "settle_rejections", "Requests refused, by error code", ["code"], registry=r
        )
        self.accept_seconds = Histogram(
            "settle_accept_seconds",
            "Time to accept a transfer (request in to 202 out)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ws_lag_seconds = Histogram(
            "settle_ws_delivery_lag_seconds",
            "From an event's commit to its hand-over to this process's WebSockets",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ws_connections = Gauge(
            "settle_websocket_connections", "Open WebSocket subscriptions", registry=r
        )
        self.loop_lag = Histogram(
            "settle_event_loop_lag_seconds",
            "How late a timer fires on the web process's event loop: what every socket"
            " and request waits for a loop busy with something else",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.pending = Gauge("settle_transfers_pending", "Transfers pending now", registry=r)
        self.queue_depth = Gauge(
            "settle_queue_depth", "Settlement jobs queued in Redis now", registry=r
        )


class SettlementMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.settled = Counter(
            "settle_transfers_settled", "Transfers settled, by outcome", ["outcome"], registry=r
        )
        self.window_seconds = Histogram(
            "settle_consistency_window_seconds",
            "From acceptance to settlement, measured at settlement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def record(self, finished: Iterable[Transfer]) -> None:
        """Count and log transfers a settlement just committed."""
        for transfer in finished:
            self.settled.labels(transfer.status.value).inc()
            window_ms = transfer.settled_in_ms or 0.0
            self.window_seconds.observe(window_ms / 1000)
            settle_log.info(
                "settled transfer=%s outcome=%s window_ms=%s",
                transfer.id,
                transfer.status.value,
                window_ms,
            )


SETTLEMENT = SettlementMetrics()

# Webhook attempts wait on receivers across the internet: seconds, not milliseconds.
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 36_000.0, 432_000.0)


class WebhookMetrics:
    """The webhook deliveries of this process's worker (one registry per process, shown
    with the settlement's)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.attempts = Counter(
            "settle_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, http_5xx, timeout, ...)",
            ["outcome"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "settle_webhook_attempt_seconds",
            "How long a receiver took to answer an attempt",
            buckets=WEBHOOK_BUCKETS,
            registry=r,
        )
        self.queue_age_seconds = Histogram(
            "settle_webhook_queue_age_seconds",
            "How old a delivery was when it was attempted (from its event's delivery being"
            " made, after the commit)",
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.disabled = Counter(
            "settle_webhook_endpoints_disabled",
            "Endpoints disabled after failing for SETTLE_WEBHOOK_DISABLE_AFTER_S",
            registry=r,
        )


WEBHOOKS = WebhookMetrics()


async def probe_loop_lag(histogram: Histogram, every_s: float = LAG_PROBE_S) -> None:
    """Forever: sleep ``every_s`` and record how much later than asked the loop woke us.
    Anything that holds the loop (a synchronous query, a long render, a GC pause) shows
    up here as the delay it inflicted on everything else."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(every_s)
        histogram.observe(max(loop.time() - start - every_s, 0.0))


def event_age_s(message: Header) -> float | None:
    """Seconds since the event's change committed (acceptance or settlement of its
    transfer); None for events that carry no time."""
    at = message.committed_at
    if at is None:
        return None
    try:
        return time.time() - datetime.fromisoformat(at).timestamp()
    except ValueError:
        return None
