"""Responses: JSON bodies, and the one place where every error becomes a response.

A refusal (``errors.SettleError``), Starlette's own 404 and 405, a backing service being
down (503) and a bug (500) all go through ``error_response``: the API and JSON clients
get the spec's ``{"error": {...}}``; pages get an HTML page, an htmx announcement, or for
401 the login page. Never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from server.domain import errors, wire
from server.store import unavailable
from server.web import fragments

log = logging.getLogger("settle.app")

# Paths whose errors are JSON whatever the client accepts.
_JSON_PATHS = ("/openapi.json", "/metrics", "/healthz", "/readyz")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else wire.encode(content)


def wants_html(request: Request) -> bool:
    """Errors on page paths render as HTML; the API (and JSON clients) get JSON."""
    path = request.url.path
    if path.startswith("/api") or path in _JSON_PATHS:
        return False
    return "application/json" not in request.headers.get("accept", "")


def error_response(request: Request, exc: errors.SettleError) -> Response:
    """The response to a refused request, as JSON or HTML."""
    state = request.scope.get("state", {})
    app = state.get("services")
    if app is not None:
        app.metrics.rejections.labels(exc.code).inc()
    if not wants_html(request) or app is None:
        return JSONResponse(wire.error(exc), status_code=exc.status, headers=exc.headers())
    return _html_error(request, exc)


def _html_error(request: Request, exc: errors.SettleError) -> Response:
    """The HTML form of an error: a login redirect, an htmx announcement, or a page."""
    if exc.status == 401:
        target = "/login?next=" + quote(request.url.path)
        if fragments.is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    env = fragments.templates(request)
    if fragments.is_htmx(request):
        html = env.get_template("_announce.html").render(text=exc.message, oob=True, tone="error")
        return fragments.html(html, exc.status, exc.headers())
    context = {
        "status": exc.status,
        "code": exc.code,
        "message": exc.message,
        "session": None,
        "note": None,
    }
    return fragments.page(env, "error.html", context, exc.status, exc.headers())


async def refused(request: Request, exc: Exception) -> Response:
    """Exception handler for ``errors.SettleError``."""
    assert isinstance(exc, errors.SettleError)
    return error_response(request, exc)


_HTTP_ERRORS: dict[int, type[errors.SettleError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
}


async def http_error(request: Request, exc: Exception) -> Response:
    """Exception handler for Starlette's own errors (no route, wrong method)."""
    assert isinstance(exc, HTTPException)
    # Starlette's own headers, such as Allow on a 405.
    kind = _HTTP_ERRORS.get(exc.status_code)
    if kind is not None:
        return error_response(request, kind(str(exc.detail), headers=exc.headers))
    return error_response(request, errors.HTTPError(exc.status_code, str(exc.detail), exc.headers))


async def server_error(request: Request, exc: Exception) -> Response:
    """Exception handler for everything else: 503 if a backing service is briefly down,
    500 (logged with its traceback, which the client never sees) for a bug."""
    if unavailable(exc):
        log.warning("unavailable: %s %s: %r", request.method, request.url.path, exc)
        busy = errors.ServiceUnavailable("a backing service is briefly unavailable; retry")
        return error_response(request, busy)
    log.exception("internal error: %s %s", request.method, request.url.path)
    if wants_html(request):
        message = "Nothing was lost. Please try again in a moment."
    else:
        message = "the server failed; nothing was lost, retry with the same Idempotency-Key"
    return error_response(request, errors.InternalError(message))
