"""How settle serves HTTP: uvicorn's configuration, and the limits a client cannot
stretch, enforced in the protocol before any byte reaches the app.

uvicorn's httptools protocol reads request headers of any size, waits forever for a
client that trickles its request a byte at a time, and keeps a connection that never
sends a byte open for good (its keep-alive timer starts only after a first answer).
``GuardedHttp`` adds, each answered in the JSON error shape with the headers every
answer carries (``server.web.headers``) and ``connection: close``:

- a connection silent for ``IDLE_TIMEOUT_S`` (5 s) after it is accepted, or between two
  requests, is closed (nothing was asked: nothing is answered);
- request line and headers complete within ``HEADER_TIMEOUT_S`` (10 s) of the
  connection's accept (or the end of the previous request), and the body within
  ``BODY_TIMEOUT_S`` (30 s) of the headers: else ``408``, then close;
- request line and headers at most ``MAX_HEADER_BYTES`` (16 KiB): ``431``, then close;
- at most ``limit_concurrency`` open connections (HTTP and WebSocket) per process, plus
  ``RESERVE_CONNECTIONS`` (32) kept for health checks: a connection accepted while the
  cap is full is served ``/healthz`` and ``/readyz`` only (one request, within
  ``RESERVE_TIMEOUT_S``), anything else there gets ``503``; one accepted while the
  reserve is full too gets ``503`` at once. uvicorn's own check (HTTP requests only,
  once their headers are read, ``text/plain``) is switched off;
- a request uvicorn's parser refuses: ``400 bad_request``.

WebSocket messages are capped by the WebSocket library itself (``ws_max_size``): a
bigger frame is refused (close code 1009) before it is buffered. ``GuardedWebSocket``
makes every refusal of a frame (too big, malformed, invalid UTF-8: close code 1007)
reach the client as a close frame, never as a TCP reset, and keeps the server's log
free of the tracebacks a client could otherwise write into it at will.

Everything here that reaches into uvicorn's protocol classes (their callbacks and
attributes, not a public API: uvicorn has no hook for these deadlines) is in this file,
and uvicorn is pinned (pyproject.toml) so that it cannot change underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11
from websockets.http11 import Response
from websockets.server import ServerProtocol

from server.settings import Settings
from server.web import headers

MAX_HEADER_BYTES = 16 * 1024
# A connection that sends nothing for this long, after its accept or between two
# requests, is closed: a silent socket holds a file and a place under the cap.
IDLE_TIMEOUT_S = 5.0
# The request line and headers must be complete this long after the connection's
# accept (or the end of the previous request on a kept-alive connection).
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
# Connections above the cap kept for health checks, so that a full cap does not make
# the process look dead to its load balancer (see the module docstring).
RESERVE_CONNECTIONS = 32
# A reserve connection must send its whole request this soon (a health check sends it
# at once): a silent client does not keep a reserved place from the next check.
RESERVE_TIMEOUT_S = 1.0
HEALTH_PATHS = (b"/healthz", b"/readyz")
# What a WebSocket client may send in one message (server.web.ws reads nothing bigger).
WS_MAX_MESSAGE = 4096
# After refusing a request, what the client still sends is read and dropped for this
# long (at most LINGER_BYTES), so that the refusal reaches it instead of a TCP reset.
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024
# File descriptors kept for everything but client connections (the database, Redis,
# log files, the listening socket).
SPARE_FDS = 64


def _reply(status: int, reason: str, code: str, message: str) -> bytes:
    """A refusal the protocol writes itself: the error shape, with the headers every
    answer carries, and ``connection: close`` (the connection closes after it)."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    fields = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *headers.EVERY_RESPONSE,
        headers.NOT_CACHED,
        ("connection", "close"),
    ]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return head.encode() + b"\r\n" + body


HEADERS_TOO_LARGE = _reply(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    f"the request line and headers are limited to {MAX_HEADER_BYTES // 1024} KiB",
)
TOO_SLOW = _reply(
    408, "Request Timeout", "request_timeout", "the request was not sent in time; send it again"
)
NOT_HTTP = _reply(
    400, "Bad Request", "bad_request", "the request is not valid HTTP/1.1; fix it and send it again"
)
BUSY = _reply(
    503,
    "Service Unavailable",
    "service_unavailable",
    "too many open connections; retry in a moment",
)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with settle's limits (see the module docstring).

    One timer per connection at most: waiting for a request (idle, then its head), for
    a body, or none while the app works on a request."""

    max_header_bytes = MAX_HEADER_BYTES
    idle_timeout_s = IDLE_TIMEOUT_S
    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    reserve = RESERVE_CONNECTIONS
    reserve_timeout_s = RESERVE_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The cap is enforced here, at accept; uvicorn's own check would answer a
        # reserve connection's health check 503 (text/plain), so it is switched off.
        self.cap = self.limit_concurrency
        self.limit_concurrency = None
        self._reserved = False  # accepted while the cap was full: health checks only
        self._head_bytes = 0  # of the request whose headers are still arriving
        self._in_head = True
        self._head_due: float | None = None  # when the head must be in (loop time)
        self._deadline: asyncio.TimerHandle | None = None
        self._refusal: bytes | None = None  # to answer once the data at hand is parsed
        self._lingering = -1  # bytes dropped since refusing; -1: not refused
        # A WebSocket handshake was handed over: the connection waits for no request
        # any more, so no idle or header timer may be armed on it again.
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        already = len(self.connections)  # counted before this connection joins them
        super().connection_made(transport)
        if self.cap is not None and already >= self.cap + self.reserve:
            self._answer_and_close(BUSY)
            return
        self._reserved = self.cap is not None and already >= self.cap
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.transport.abort()
            return
        if self._in_head:
            if self._head_bytes == 0:  # a request begins: its head has until _head_due
                due = self._head_due
                if due is None:  # pipelined while the app answered the one before
                    due = self.loop.time() + self.header_timeout_s
                self._arm(due, self._too_slow)
            self._head_bytes += len(data)
        super().data_received(data)
        # Headers too big while still arriving, or refused once complete (on_headers_...).
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refusal = self._refusal or HEADERS_TOO_LARGE
        if self._refusal is not None:
            self._answer_and_close(self._refusal)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what its parser refuses (a bad byte in a header, say) is
        # text/plain without the headers every answer carries, and closes at once.
        self._answer_and_close(NOT_HTTP)

    def on_headers_complete(self) -> None:
        if self._refusal is not None or self._lingering >= 0:
            return  # a request pipelined behind a refused one is never run
        self._in_head, self._head_due = False, None
        self._cancel_deadline()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_header_bytes or (
            self.parser.should_upgrade() and not self._fits_websockets()
        ):
            self._refusal = HEADERS_TOO_LARGE  # answered once this chunk is parsed
            return
        if self._reserved and not self._is_health_check():
            self._refusal = BUSY
            return
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is before:
            self._upgraded = True  # a WebSocket handshake: its protocol takes over
            return
        # uvicorn's cycle closes the connection itself once it has answered with
        # Connection: close; through this it lingers instead (see _Lingering).
        self.cycle.transport = _Lingering(self)  # type: ignore[assignment]
        if self._reserved:
            self.cycle.keep_alive = False  # one health check per reserved place
        if self.cycle.more_body and self._has_body():
            self._arm(self.loop.time() + self.body_timeout_s, self._too_slow)

    def _is_health_check(self) -> bool:
        path = self.url.split(b"?", 1)[0]
        return path in HEALTH_PATHS and self.parser.get_method() in (b"GET", b"HEAD")

    def _fits_websockets(self) -> bool:
        """Whether the websockets library will read this handshake: it refuses lines over
        8 KiB and more than 128 headers, and uvicorn then never answers at all."""
        longest = max((len(n) + len(v) + 2 for n, v in self.headers), default=0)
        return (
            len(self.url) + len(b"GET  HTTP/1.1") < http11.MAX_LINE_LENGTH
            and longest < http11.MAX_LINE_LENGTH
            and len(self.headers) <= http11.MAX_NUM_HEADERS
        )

    def _should_upgrade(self) -> bool:
        # A refused WebSocket handshake (431, 503) is answered like any request.
        return self._refusal is None and super()._should_upgrade()

    def _unsupported_upgrade_warning(self) -> None:
        if self._refusal is None:  # else it is no unsupported upgrade, but refused
            super()._unsupported_upgrade_warning()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None and self._lingering < 0:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None or self._lingering >= 0:
            return
        self._cancel_deadline()
        self._in_head, self._head_bytes = True, 0
        super().on_message_complete()
        if self.cycle is None or self.cycle.response_complete:
            self._await_request()  # answered before its body was in: wait for the next

    def on_response_complete(self) -> None:
        if self._lingering >= 0:
            self.pipeline.clear()  # closing: no request queued behind this one starts
        super().on_response_complete()
        # uvicorn's keep-alive timer starts only here and stops at any byte (the rest of
        # an unread body included); the wait for the next request is timed here instead.
        self._unset_keepalive_if_required()
        latest = self.cycle
        if latest.response_complete and not latest.more_body and self._head_bytes == 0:
            self._await_request()

    def _await_request(self) -> None:
        """Time the wait for the next request: silence is closed after the idle timeout,
        and its head must be complete by the header deadline. Not once the connection
        became a WebSocket: its transport is the WebSocket's now (closing it there would
        drop the socket without a close frame)."""
        if self._upgraded or self._lingering >= 0 or self.transport.is_closing():
            return
        head = self.reserve_timeout_s if self._reserved else self.header_timeout_s
        now = self.loop.time()
        self._head_due = now + head
        self._arm(now + min(self.idle_timeout_s, head), self._idle)

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False

    def _arm(self, when: float, then: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_at(when, then)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _idle(self) -> None:
        """Nothing was sent in time: nothing was asked, so nothing is answered."""
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self._in_head or not self.cycle.response_started:
            self._answer_and_close(TOO_SLOW)
        else:
            self.transport.close()

    def _answer_and_close(self, reply: bytes) -> None:
        """Send ``reply`` and close (``_linger``)."""
        if self.transport.is_closing() or self._lingering >= 0:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # This answer replaces the app's: the app is told the client is gone (its
            # own answer would be dropped).
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(reply)
        self._linger()

    def _linger(self) -> None:
        """Close, after an answer, without reading another request: the rest of what the
        client sends is dropped unread for a moment (not buffered), then the connection
        closes, so that the answer arrives rather than a reset (closing a socket with
        unread data in it resets the connection, and the client may lose the answer)."""
        self._cancel_deadline()
        if self.transport.is_closing() or self._lingering >= 0:
            return
        self._lingering = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


class _Lingering:
    """The connection as uvicorn's request cycle sees it: it writes, asks whether the
    connection is closing, and closes it once it has answered with ``Connection: close``
    (a 413 for a body left unread, say). Closing lingers (``GuardedHttp._linger``)."""

    def __init__(self, protocol: GuardedHttp) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol._lingering >= 0 or self._protocol.transport.is_closing()

    def close(self) -> None:
        self._protocol._linger()


class _Handshake(ServerProtocol):
    """websockets' server side of the handshake, as uvicorn drives it: a handshake that
    is refused (a header missing or wrong, a failure before the socket is accepted) is
    answered in the error shape, with the headers every answer carries, instead of the
    library's text/plain."""

    def send_response(self, response: Response) -> None:
        status = response.status_code
        if status != 101:
            text = bytes(response.body).decode(errors="replace").strip()
            code = {500: "internal_error", 503: "service_unavailable"}.get(status, "bad_request")
            response.body = orjson.dumps(
                {"error": {"code": code, "message": text or response.reason_phrase}}
            )
            fields = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(response.body))),
                *headers.EVERY_RESPONSE,
                headers.NOT_CACHED,
                ("Connection", "close"),
            ]
            for name, value in fields:
                if name in response.headers:
                    del response.headers[name]  # every copy: setting one adds another
                response.headers[name] = value
        super().send_response(response)


class GuardedWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, closing politely on a client's bad frame.

    uvicorn writes the close frame and then closes the socket at once: frames the client
    already sent arrive at a closed socket, the kernel answers them with a reset, and the
    client loses the close frame (it sees 1006, "dropped"). Here the socket is half-closed
    instead; what still arrives is dropped unread until the client closes too, for at
    most ``LINGER_S`` (and ``LINGER_BYTES``).
    """

    _dropped = -1  # bytes dropped since refusing; -1: not refused

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The same handshake, as uvicorn configured it, answering refusals our way.
        made = self.conn
        self.conn = _Handshake(
            extensions=made.available_extensions,
            max_size=(made.max_message_size, made.max_fragment_size),
            logger=made.logger,
        )

    def data_received(self, data: bytes) -> None:
        if self._dropped >= 0:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.abort()
            return
        super().data_received(data)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.logger.info("WebSocket closed: a text message was not UTF-8")
                self.conn.send_close(1007, "text messages must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._dropped = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        # As the close timer, it also keeps uvicorn from closing once the app returns.
        self.close_timer = self.loop.call_later(LINGER_S, self.transport.close)


def max_connections(settings: Settings) -> int:
    """The connection cap: the configured one, or fewer if the process may not open as
    many files (a connection over the file limit would fail without an answer).

    The process's soft limit on open files is raised first, as far as its hard limit
    allows, to what the cap, the reserve and the spare descriptors need (many systems
    start processes with a soft limit of 1,024)."""
    want = settings.max_connections + RESERVE_CONNECTIONS + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - SPARE_FDS - RESERVE_CONNECTIONS))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings every settle web server runs with (``settle web``, ``settle
    run``, the tests' servers, the benchmark's ceiling)."""
    return {
        "http": GuardedHttp,
        "ws": GuardedWebSocket,
        "limit_concurrency": max_connections(settings),
        "ws_max_size": WS_MAX_MESSAGE,
        # permessage-deflate keeps two zlib streams per socket (~35 KB, most of an idle
        # socket's memory); events are small JSON, so memory wins over bandwidth here.
        "ws_per_message_deflate": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        # Not "server: uvicorn": what runs here is nobody else's business.
        "server_header": False,
        # Our own request log (server.web.middleware.Observe) never writes query strings.
        "access_log": False,
        "log_config": None,
    }


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """A uvicorn configuration for ``app`` with settle's limits (``overrides`` over them,
    and over ``settings``' host and port)."""
    options = {"host": settings.host, "port": settings.port, **uvicorn_options(settings)}
    return uvicorn.Config(app, **{**options, **overrides})


class Server(uvicorn.Server):
    """uvicorn's server, leaving the signals to its host (``settle run``): uvicorn would
    re-raise SIGTERM once it has stopped, ending the process before the worker, the
    store and the bundled Redis are closed."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
