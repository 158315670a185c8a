"""The operational endpoints: liveness, readiness and Prometheus metrics.

``/metrics`` (the web process's, and the worker's on ``SETTLE_METRICS_PORT``) tells
transfer counts, what is pending, refusals by code and latencies: not for everyone.
With ``SETTLE_METRICS_TOKEN`` set it wants that token as ``Authorization: Bearer``
(else ``401``, which tells a scraper what it lacks); without one it answers only a
loopback TCP peer whose request carries no forwarding header (else ``404``: there is
no credential that would help, and the endpoint is not advertised). The raw headers
and the connection's own peer decide, not what uvicorn's proxy support made of them:
a proxy on the same host is a loopback peer, and says so only in those headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.domain import errors
from server.metrics import SETTLEMENT, WEBHOOKS
from server.settings import Settings
from server.store import reads
from server.web import middleware, responses
from server.web.responses import JSONResponse
from server.web.services import services

log = logging.getLogger("settle.app")

# Headers by which a proxy says whom it forwards (RFC 7239, and the de facto ones).
_FORWARDING = (b"forwarded", b"x-real-ip")
_FORWARDING_PREFIX = b"x-forwarded-"


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


def check_scraper(request: Request, settings: Settings) -> None:
    """Raise unless the request may read metrics (see the module docstring)."""
    if settings.metrics_token:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.metrics_token.encode()
        ):
            raise errors.Unauthorized("send Authorization: Bearer <SETTLE_METRICS_TOKEN>")
        return
    forwarded = any(
        name in _FORWARDING or name.startswith(_FORWARDING_PREFIX)
        for name, _ in request.scope["headers"]
    )
    if forwarded or not _loopback(request):
        raise errors.NotFound("not found")


def _loopback(request: Request) -> bool:
    # No forwarding header: uvicorn left the client as the connection's own peer.
    if request.client is None:  # not TCP
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def metrics(request: Request) -> Response:
    app = services(request)
    check_scraper(request, app.settings)
    m = app.metrics
    # Point-in-time gauges, read at scrape; a backing service being down leaves them stale.
    try:
        m.pending.set(await reads.pending_count(app.store))
        m.queue_depth.set(await app.redis.zcard(app.settings.queue_name))
    except Exception as exc:
        log.warning("metrics gauges not refreshed: %r", exc)
    body = (
        generate_latest(m.registry)
        + generate_latest(SETTLEMENT.registry)
        + generate_latest(WEBHOOKS.registry)
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]


def worker_metrics_app(settings: Settings) -> Starlette:
    """What ``settle worker`` serves on ``SETTLE_METRICS_PORT``: its settlement metrics
    at ``/metrics``, under the web's rule for who may read them, with the web's headers,
    request log and error shape."""

    async def settlement(request: Request) -> Response:
        check_scraper(request, settings)
        worker = generate_latest(SETTLEMENT.registry) + generate_latest(WEBHOOKS.registry)
        return Response(worker, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/metrics", settlement)],
        middleware=[Middleware(middleware.Observe)],
        exception_handlers={
            errors.SettleError: responses.refused,
            HTTPException: responses.http_error,
            Exception: responses.server_error,
        },
    )
