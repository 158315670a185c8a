"""The request middleware: one structured log line per HTTP request, the acceptance
metrics, the security headers of every response (``server.web.headers``), the one
limit on request bodies, and the answer to a request whose handler failed.

Every route's body is limited to ``MAX_BODY`` here, before any handler parses (or
spools) a byte of it: a declared ``Content-Length`` over the limit is refused before
the app runs, and a chunked body is cut off as soon as it passes the limit (reading it
raises ``PayloadTooLarge`` in the handler). Either way the answer is
``413 payload_too_large`` (JSON, or the HTML error page: ``server.web.responses``) with
``Connection: close``: the rest of the body never reaches the app (the HTTP protocol
drops what still comes, for a moment, and closes: ``server.web.protocol``).

Starlette's own last-resort handler answers a failed request and then raises the error
again, for the server to log: uvicorn then logs a second traceback and, the answer being
out, closes the kept-alive connection under the client's next request. Here a failure
is answered (``responses.server_error``: 500, or 503 when a backing service is down)
with every header the other answers carry, logged once, and the connection stays
usable. A client that hangs up before its request was read is no failure at all: its
request's log line says ``status=499`` (nginx's word for it), and that is all.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.domain import errors
from server.web import headers, responses

log = logging.getLogger("settle.request")

# The status logged for a request whose client hung up before it was answered.
CLIENT_GONE = 499
# Request bodies, every route's: the JSON API's and the pages' forms alike.
MAX_BODY = 64 * 1024
TOO_LARGE = f"the request body is larger than {MAX_BODY // 1024} KiB"


def note(request: Request, transfer_id: str, accepted: bool = False) -> None:
    """Name the transfer a request concerns (for its log line); ``accepted``: it
    accepted a new one (not a replay), so its time counts as an acceptance."""
    request.state.transfer_id = transfer_id
    if accepted:
        request.state.accepted = True


class Observe:
    """ASGI middleware: one structured log line per HTTP request (never its headers or
    query string, which may carry credentials), the acceptance metrics, the security
    headers of every response (``server.web.headers``), and the answer to a failure (see
    the module docstring). Handlers name the transfer a request concerns in
    ``request.state.transfer_id``, and set ``request.state.accepted`` when they accepted
    a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        exchange = _Exchange(receive, send, scope)
        try:
            if _declared_length(scope) > MAX_BODY:
                exchange.cut = True
                refusal = errors.PayloadTooLarge(TOO_LARGE)
                answer = responses.error_response(Request(scope, receive), refusal)
                await answer(scope, receive, exchange.send)
            else:
                await self.app(scope, exchange.receive, exchange.send)
        except ClientDisconnect:
            pass
        except Exception as exc:
            # Logged (with its traceback) and counted by server_error, once.
            failure = await responses.server_error(Request(scope, receive), exc)
            if not exchange.status:
                await failure(scope, receive, exchange.send)
            # Else half an answer is out: it cannot be completed or replaced, and the
            # server closes the connection, so that the client sees it cut short.
        finally:
            _observed(scope, exchange.status or CLIENT_GONE, time.perf_counter() - start)


class _Exchange:
    """One request's receive and send, watched: the status answered, and the body
    limit (``cut``: the body is refused and left unread, so close after the answer)."""

    def __init__(self, receive: Receive, send: Send, scope: Scope) -> None:
        self._receive = receive
        self._send = send
        self._scope = scope
        self.status = 0
        self.received = 0
        self.cut = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers.secure(message, self._scope)
            if self.cut:
                MutableHeaders(scope=message)["Connection"] = "close"
        await self._send(message)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.status:
            self.received += len(message.get("body", b""))
            if self.received > MAX_BODY:
                self.cut = True
                raise errors.PayloadTooLarge(TOO_LARGE)
        return message


def _observed(scope: Scope, status: int, elapsed: float) -> None:
    """The request's log line, and its time as an acceptance when it accepted one."""
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


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length (uvicorn's parser refuses a malformed one), or 0."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
