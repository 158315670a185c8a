"""``create_app(settings)``: the Starlette app, its lifespan resources and error rendering."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from arq import create_pool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from server import api, errors, fragments, metrics, openapi, pages, ws
from server.db import Store, unavailable
from server.dispatch import Dispatcher
from server.hub import Hub
from server.redisbox import redis_settings
from server.settings import LOG_FORMAT, Settings

log = logging.getLogger("settle.app")


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """Build the app. ``settings.redis_url`` must be resolved (see ``server.cli``).

    ``store``: a connected database handle to share (``settle run`` shares one between
    web and worker, so SQLite writes queue on one lock); by default the app opens its own.
    """
    if settings.redis_url is None:
        raise ValueError("create_app needs settings.redis_url; the CLI resolves the bundled one")
    redis_url = settings.redis_url

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        own = store is None
        db = Store(settings) if store is None else store
        if own:
            await db.connect()
        redis = await create_pool(redis_settings(settings, redis_url))
        m = metrics.Metrics()
        hub = Hub(settings, db, lag=m.ws_lag_seconds)
        m.ws_connections.set_function(lambda: hub.subscriber_count)
        templates = fragments.environment()
        await hub.start()
        lag_probe = asyncio.create_task(metrics.probe_loop_lag(m.loop_lag))
        try:
            yield {
                "settings": settings,
                "store": db,
                "redis": redis,
                "dispatch": Dispatcher(redis, settings),
                "metrics": m,
                "hub": hub,
                "templates": templates,
                # The /ws stream adds this HTML to each message for htmx pages.
                "render_content": fragments.content_renderer(templates),
            }
        finally:
            lag_probe.cancel()
            await asyncio.gather(lag_probe, return_exceptions=True)
            await hub.stop()
            await redis.aclose()
            if own:
                await db.disconnect()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics.endpoint),
            Route("/openapi.json", openapi.endpoint),
            *api.routes,
            WebSocketRoute("/ws", ws.stream),
            Mount("/static", StaticFiles(directory=fragments.STATIC_DIR), name="static"),
            *pages.routes,
        ],
        middleware=[Middleware(metrics.Observe)],
        exception_handlers={
            errors.SettleError: settle_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    # No redirect to the same path with or without a trailing slash: /api/accounts/a%2F (an
    # id ending in "/", decoded before routing) would be sent on to another id's account.
    app.router.redirect_slashes = False
    return app


def from_env() -> Starlette:
    """App factory for ``uvicorn --factory`` (each uvicorn worker builds its own)."""
    # A uvicorn worker process starts afresh: without this its INFO lines would be lost.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return create_app(Settings.from_env())


async def healthz(request: Request) -> Response:
    return api.JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    checks: dict[str, str] = {}
    try:
        await request.state.store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        await request.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return api.JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


def error_response(exc: errors.SettleError, headers: Mapping[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 6750: how to authenticate
    return api.JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def settle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.SettleError)
    m: metrics.Metrics | None = getattr(request.state, "metrics", None)
    if m is not None:
        m.rejections.labels(exc.code).inc()
    if pages.wants_html(request):
        return pages.error_page(request, exc.status, exc.code, exc.message)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    err = errors.SettleError(str(exc.detail))
    err.status, err.code = exc.status_code, codes.get(exc.status_code, "bad_request")
    if pages.wants_html(request):
        return pages.error_page(request, err.status, err.code, err.message)
    # Starlette's own headers, such as Allow on a 405.
    return error_response(err, exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    if unavailable(exc):
        log.warning("unavailable: %s %s: %r", request.method, request.url.path, exc)
        busy = errors.ServiceUnavailable("a backing service is briefly unavailable; retry")
        if pages.wants_html(request):
            return pages.error_page(request, busy.status, busy.code, busy.message)
        return error_response(busy)
    log.exception("internal error: %s %s", request.method, request.url.path)
    if pages.wants_html(request):
        message = "Nothing was lost. Please try again in a moment."
        return pages.error_page(request, 500, "internal_error", message)
    return api.JSONResponse(
        {
            "error": {
                "code": "internal_error",
                "message": "the server failed; nothing was lost, "
                "retry with the same Idempotency-Key",
            }
        },
        status_code=500,
    )
