"""How settle serves HTTP: uvicorn's configuration, and the limits a client cannot
stretch, enforced in the protocol before any byte reaches the app.

uvicorn's httptools protocol reads request headers of any size and waits forever for a
client that trickles its request a byte at a time. ``GuardedHttp`` adds:

- request line and headers at most ``MAX_HEADER_BYTES`` (16 KiB): ``431``, then close;
- the whole request line and headers within ``HEADER_TIMEOUT_S`` of their first byte,
  and the whole body within ``BODY_TIMEOUT_S`` of the headers: ``408``, then close;
- at most ``limit_concurrency`` open connections (HTTP and WebSocket) per process: the
  next ones get ``503``, then close (uvicorn's own check covers HTTP requests only, and
  only once their headers have been read).

WebSocket messages are capped by the WebSocket library itself (``ws_max_size``): a
bigger frame is refused (close code 1009) before it is buffered. ``GuardedWebSocket``
makes every refusal of a frame (too big, malformed, invalid UTF-8: close code 1007)
reach the client as a close frame, never as a TCP reset, and keeps the server's log
free of the tracebacks a client could otherwise write into it at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Iterator
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11

from server.settings import Settings

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
# An idle keep-alive connection is closed after this (uvicorn's own timer).
KEEP_ALIVE_S = 5
# What a WebSocket client may send in one message (server.ws reads nothing bigger).
WS_MAX_MESSAGE = 4096
# After refusing a request, what the client still sends is read and dropped for this
# long (at most LINGER_BYTES), so that the refusal reaches it instead of a TCP reset.
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024
# File descriptors kept for everything but client connections (the database, Redis,
# log files, the listening socket).
SPARE_FDS = 64


def _reply(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


HEADERS_TOO_LARGE = _reply(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    f"the request line and headers are limited to {MAX_HEADER_BYTES // 1024} KiB",
)
TOO_SLOW = _reply(
    408, "Request Timeout", "request_timeout", "the request was not sent in time; send it again"
)
BUSY = _reply(
    503,
    "Service Unavailable",
    "service_unavailable",
    "too many open connections; retry in a moment",
)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with settle's limits (see the module docstring)."""

    max_header_bytes = MAX_HEADER_BYTES
    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the request whose headers are still arriving
        self._in_head = True
        self._deadline: asyncio.TimerHandle | None = None
        self._refuse = False
        self._lingering = -1  # bytes dropped since refusing; -1: not refused
        self._too_big = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Counted before this connection joins them.
        cap = self.limit_concurrency
        self._refuse = cap is not None and len(self.connections) >= cap
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.transport.abort()
            return
        if self._refuse:
            self._answer_and_close(BUSY)
            return
        if self._in_head:
            if self._head_bytes == 0:
                self._arm(self.header_timeout_s)
            self._head_bytes += len(data)
        super().data_received(data)
        # Headers that were too big when complete, or are already while still arriving.
        still_arriving = self._in_head and self._head_bytes > self.max_header_bytes
        if (self._too_big or still_arriving) and self.parser is not None:
            self._answer_and_close(HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_deadline()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_header_bytes or (
            self.parser.should_upgrade() and not self._fits_websockets()
        ):
            self._too_big = True  # answered once this chunk is parsed; the app never runs
            return
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body and self._has_body():
            self._arm(self.body_timeout_s)

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
        # A WebSocket handshake with headers too big is refused (431) like any request.
        return not self._too_big and super()._should_upgrade()

    def on_body(self, body: bytes) -> None:
        if not self._too_big:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        self._in_head, self._head_bytes = True, 0
        if not self._too_big:
            super().on_message_complete()

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False

    def _arm(self, seconds: float) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self._in_head or not self.cycle.response_started:
            self._answer_and_close(TOO_SLOW)
        else:
            self.transport.close()

    def _answer_and_close(self, reply: bytes) -> None:
        """Send ``reply`` and close, without reading another request: the rest of what
        the client sends is dropped unread for a moment (not buffered), then the
        connection closes, so that the answer arrives rather than a reset."""
        self._cancel_deadline()
        if self.transport.is_closing() or self._lingering >= 0:
            return
        self.transport.write(reply)
        self._lingering = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


class GuardedWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, closing politely on a client's bad frame.

    uvicorn writes the close frame and then closes the socket at once: frames the client
    already sent arrive at a closed socket, the kernel answers them with a reset, and the
    client loses the close frame (it sees 1006, "dropped"). Here the socket is half-closed
    instead; what still arrives is dropped unread until the client closes too, for at
    most ``LINGER_S`` (and ``LINGER_BYTES``).
    """

    _dropped = -1  # bytes dropped since refusing; -1: not refused

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
    many files (a connection over the file limit would fail without an answer)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - SPARE_FDS))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings every settle web server runs with (``settle web``, ``settle
    run``, the tests' servers, the benchmark's ceiling)."""
    return {
        "http": GuardedHttp,
        "ws": GuardedWebSocket,
        "limit_concurrency": max_connections(settings),
        "timeout_keep_alive": KEEP_ALIVE_S,
        "ws_max_size": WS_MAX_MESSAGE,
        # permessage-deflate keeps two zlib streams per socket (~35 KB, most of an idle
        # socket's memory); events are small JSON, so memory wins over bandwidth here.
        "ws_per_message_deflate": False,
        "proxy_headers": True,
        # Not "server: uvicorn": what runs here is nobody else's business.
        "server_header": False,
        # Our own request log (server.metrics.Observe) never writes query strings.
        "access_log": False,
        "log_config": None,
    }


def config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """A uvicorn configuration for ``app`` with settle's limits."""
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, **{**uvicorn_options(settings), **overrides}
    )


class Server(uvicorn.Server):
    """uvicorn's server, leaving the signals to its host (``settle run``): uvicorn would
    re-raise SIGTERM once it has stopped, ending the process before the worker, the
    store and the bundled Redis are closed."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
