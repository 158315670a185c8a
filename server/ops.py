"""The operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import reads
from server.metrics import SETTLEMENT
from server.responses import JSONResponse
from server.services import services

log = logging.getLogger("settle.app")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    app = services(request)
    checks: dict[str, str] = {}
    try:
        await app.store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        await app.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    app = services(request)
    m = app.metrics
    # Point-in-time gauges, read at scrape; a backing service being down leaves them stale.
    try:
        m.pending.set(await reads.pending_count(app.store))
        m.queue_depth.set(await app.redis.zcard(app.settings.queue_name))
    except Exception as exc:
        log.warning("metrics gauges not refreshed: %r", exc)
    body = generate_latest(m.registry) + generate_latest(SETTLEMENT.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]
