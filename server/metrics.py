"""Prometheus metrics and the one log line per request.

The web app has a registry per app instance (tests build many apps in one process);
settlement metrics live in one registry per process (``SETTLEMENT``), shown by the app's
``/metrics`` when the worker runs in the same process (``settle run``) and served on
``SETTLE_METRICS_PORT`` by a separate ``settle worker``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import headers

log = logging.getLogger("settle.request")
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

    def record(self, finished: Iterable[Mapping[str, Any]]) -> None:
        """Count and log transfers a settlement just committed (``transfer_of`` dicts)."""
        for transfer in finished:
            self.settled.labels(transfer["status"]).inc()
            window_ms = transfer["settled_in_ms"] or 0.0
            self.window_seconds.observe(window_ms / 1000)
            settle_log.info(
                "settled transfer=%s outcome=%s window_ms=%s",
                transfer["id"],
                transfer["status"],
                window_ms,
            )


SETTLEMENT = SettlementMetrics()


async def probe_loop_lag(histogram: Histogram, every_s: float = LAG_PROBE_S) -> None:
    """Forever: sleep ``every_s`` and record how much later than asked the loop woke us.
    Anything that holds the loop (a synchronous query, a long render, a GC pause) shows
    up here as the delay it inflicted on everything else."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(every_s)
        histogram.observe(max(loop.time() - start - every_s, 0.0))


def note(request: Request, transfer_id: str, accepted: bool = False) -> None:
    """Name the transfer a request concerns (for its log line); ``accepted``: it
    accepted a new one (not a replay), so its time counts as an acceptance."""
    request.state.transfer_id = transfer_id
    if accepted:
        request.state.accepted = True


def event_age_s(message: dict[str, Any]) -> float | None:
    """Seconds since the event's transfer change committed (acceptance or settlement)."""
    transfer = message.get("transfer") or {}
    at = transfer.get("settled_at") or transfer.get("created_at")
    if not isinstance(at, str):
        return None
    try:
        return time.time() - datetime.fromisoformat(at).timestamp()
    except ValueError:
        return None


class Observe:
    """ASGI middleware: one structured log line per HTTP request (never its headers or
    query string, which may carry credentials), the acceptance metrics, and the
    security headers of every response (``server.headers``). Handlers
    name the transfer a request concerns in ``request.state.transfer_id``, and set
    ``request.state.accepted`` when they accepted a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers.secure(message, scope)
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            state = scope.get("state", {})
            app = state.get("services")
            if app is not None and state.get("accepted"):
                app.metrics.accept_seconds.observe(elapsed)
            transfer = state.get("transfer_id")
            log.info(
                "request method=%s path=%s status=%d ms=%.1f%s",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                f" transfer={transfer}" if transfer else "",
            )
