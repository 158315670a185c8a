"""What a web process shares with every request: the lifespan state, typed.

``create_app`` builds one ``Services`` at start-up and closes it at shutdown; handlers
reach it with ``services(request)`` (or ``services(websocket)``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jinja2
from arq.connections import ArqRedis
from starlette.requests import HTTPConnection

from server.dispatch import Dispatcher
from server.hub import Hub
from server.limits import TransferRate
from server.metrics import Metrics
from server.passwords import Hasher
from server.settings import Settings
from server.store import Store
from server.throttle import Throttle

if TYPE_CHECKING:  # auth needs services at run time, not the other way round
    from server.auth import TokenCache


@dataclasses.dataclass(frozen=True)
class Services:
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
