"""Prometheus metrics. One registry per app instance, so tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "settle_transfers_accepted", "Transfers accepted as pending", registry=self.registry
        )
        self.rejections = Counter(
            "settle_rejections",
            "Requests refused, by error code",
            ["code"],
            registry=self.registry,
        )
        self.accept_seconds = Histogram(
            "settle_accept_seconds",
            "Time to accept a transfer (request in to 202 out)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )


async def endpoint(request: Request) -> Response:
    m: Metrics = request.state.metrics
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
