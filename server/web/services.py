"""What a web process shares with every request: the lifespan state, typed.

``create_app`` builds one ``Services`` at start-up and closes it at shutdown; handlers
reach it with ``services(request)`` (or ``services(websocket)``)."""

from __future__ import annotations

import dataclasses

import jinja2
from arq.connections import ArqRedis
from starlette.requests import HTTPConnection

from server.live.dispatch import Dispatcher
from server.live.hub import Hub
from server.live.limits import TransferRate
from server.metrics import Metrics
from server.settings import Settings
from server.store import Store
from server.usecases.context import Context
from server.web.credentials import TokenCache
from server.web.passwords import Hasher
from server.web.throttle import Throttle


@dataclasses.dataclass(frozen=True)
class Services:
    # What the use cases get: the store, the dispatcher, the rate limit, the metrics.
    usecases: Context
    settings: Settings
    store: Store
    redis: ArqRedis
    dispatch: Dispatcher
    metrics: Metrics
    hub: Hub
    templates: jinja2.Environment
    throttle: Throttle
    hasher: Hasher
    rate: TransferRate
    tokens: TokenCache


def services(conn: HTTPConnection) -> Services:
    """The app's shared services, from a request's or a socket's lifespan state."""
    found: Services = conn.state.services
    return found
