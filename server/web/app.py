"""``create_app(settings)``: the Starlette app and its lifespan resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from arq import create_pool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from server import logs, metrics
from server.domain import errors
from server.live.dispatch import Dispatcher
from server.live.hub import Hub
from server.live.limits import TransferRate
from server.redisbox import redis_settings
from server.settings import Settings
from server.store import Store, open_store
from server.usecases.context import Context
from server.web import (
    api,
    auth,
    fragments,
    middleware,
    openapi,
    ops,
    pages,
    passkeys_api,
    passwords,
    responses,
    webhooks_api,
    ws,
)
from server.web.credentials import TokenCache
from server.web.services import Services
from server.web.throttle import Throttle

log = logging.getLogger("settle.app")


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """Build the app. ``settings.redis_url`` must be resolved (see ``server.cli``).

    ``store``: a connected database handle to share (``settle run`` shares one between
    web and worker, so SQLite writes queue on one writer); by default the app opens its
    own.
    """
    if settings.redis_url is None:
        raise ValueError("create_app needs settings.redis_url; the CLI resolves the bundled one")
    redis_url = settings.redis_url

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        own = store is None
        db = open_store(settings) if store is None else store
        if own:
            await db.connect()
        redis = await create_pool(redis_settings(settings, redis_url))
        m = metrics.Metrics()
        templates = fragments.environment(settings.support_url)
        hub = Hub(
            settings,
            db,
            lag=m.ws_lag_seconds,
            render=fragments.content_renderer(templates),
            credential_live=lambda credential: auth.credential_live(db, credential),
        )
        m.ws_connections.set_function(lambda: hub.subscriber_count)
        await hub.start()
        lag_probe = asyncio.create_task(metrics.probe_loop_lag(m.loop_lag))
        dispatch = Dispatcher(redis, settings)
        hasher = passwords.Hasher()
        tokens = TokenCache()
        hub.on_ended.append(tokens.forget)
        rate = TransferRate(redis, settings)
        try:
            yield {
                "services": Services(
                    usecases=Context(settings, db, dispatch, rate, m),
                    settings=settings,
                    store=db,
                    redis=redis,
                    dispatch=dispatch,
                    metrics=m,
                    hub=hub,
                    templates=templates,
                    throttle=Throttle(redis, settings),
                    hasher=hasher,
                    rate=rate,
                    tokens=tokens,
                )
            }
        finally:
            lag_probe.cancel()
            await asyncio.gather(lag_probe, return_exceptions=True)
            await hub.stop()
            await dispatch.close()
            hasher.close()
            await redis.aclose()
            if own:
                await db.disconnect()

    app = Starlette(
        routes=[
            *ops.routes,
            Route("/openapi.json", openapi.endpoint),
            *api.routes,
            *webhooks_api.routes,
            *passkeys_api.routes,
            WebSocketRoute("/ws", ws.stream),
            Mount("/static", StaticFiles(directory=fragments.STATIC_DIR), name="static"),
            *pages.routes,
        ],
        middleware=[Middleware(middleware.Observe)],
        exception_handlers={
            errors.SettleError: responses.refused,
            HTTPException: responses.http_error,
            Exception: responses.server_error,
        },
        lifespan=lifespan,
    )
    # No redirect to the same path with or without a trailing slash: /api/accounts/a%2F (an
    # id ending in "/", decoded before routing) would be sent on to another id's account.
    app.router.redirect_slashes = False
    return app


def from_env() -> Starlette:
    """App factory for ``uvicorn --factory`` (each uvicorn worker builds its own)."""
    # A uvicorn worker process starts afresh: without this its INFO lines would be lost,
    # and SETTLE_LOG_LEVEL would not apply.
    logs.configure()
    settings = Settings.from_env()
    logs.quiet_libraries(settings.log_level)
    return create_app(settings)
