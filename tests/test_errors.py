"""How settle answers what goes wrong (server/web/middleware.py, server/web/responses.py),
against a real uvicorn over raw sockets: a bug is one 500 in the error shape with every
promised header on a connection that stays usable, logged once; a client hanging up
mid-request is one INFO line, not an error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.settings import Settings
from server.store import Store
from server.web.app import create_app
from tests.conftest import serve
from tests.test_api import sample


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug in a handler")


@contextlib.asynccontextmanager
async def buggy(settings: Settings, store: Store) -> AsyncIterator[int]:
    """settle served as ``settle web`` serves it, with one route that has a bug on each
    side: ``/api/boom`` (JSON) and ``/boom`` (a page)."""
    app = create_app(settings, store=store)
    app.router.routes[:0] = [Route("/api/boom", boom), Route("/boom", boom)]
    async with serve(app, settings) as url:
        yield int(url.rsplit(":", 1)[1])


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response from a connection (status, headers, body); its body has a length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.rstrip("\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice"
        headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


class Logged(logging.Handler):
    """Sets ``event`` once the messages logged so far satisfy ``done`` (the server logs
    on this event loop, so the test awaits its lines instead of polling for them)."""

    def __init__(self, done: Callable[[list[str]], bool], event: asyncio.Event) -> None:
        super().__init__()
        self.done, self.event, self.seen = done, event, list[str]()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())
        if self.done(self.seen):
            self.event.set()


def request(path: str, accept: str = "*/*") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode()


async def test_a_bug_answers_500_with_every_header_logged_once_on_a_connection_that_lives(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the 500 lacked nosniff, Referrer-Policy and no-store, uvicorn logged a
    second traceback, and the kept-alive connection was closed without `Connection:
    close`, under the client's next request."""
    caplog.set_level(logging.INFO)
    async with buggy(settings, store) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request("/api/boom"))
            status, headers, body = await read_response(reader)
            assert status == 500 and headers["content-type"] == "application/json"
            assert orjson.loads(body)["error"]["code"] == "internal_error"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"
            assert headers["cache-control"] == "no-store"
            assert "connection" not in headers, "kept alive, so not closed"
            # A page's bug: the HTML error page, with a page's headers.
            writer.write(request("/boom", "text/html"))
            status, headers, body = await read_response(reader)
            assert status == 500 and headers["content-type"].startswith("text/html")
            assert b"Nothing was lost" in body
            assert headers["x-frame-options"] == "DENY" and "content-security-policy" in headers
            assert headers["x-content-type-options"] == "nosniff"
            # The same connection goes on serving.
            writer.write(request("/metrics"))
            status, _, metrics = await read_response(reader)
            assert status == 200
        finally:
            writer.close()
    assert sample(metrics.decode(), "settle_rejections_total", code="internal_error") == 2
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.getMessage()) for r in errors] == [
        ("settle.app", "internal error: GET /api/boom"),
        ("settle.app", "internal error: GET /boom"),
    ]
    assert all(r.exc_info for r in errors), "each logged with its traceback"


async def test_a_client_hanging_up_mid_body_is_one_info_line_not_an_error(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: `ERROR settle.app internal error` plus uvicorn's own error, two tracebacks
    per connection, each counted as an internal_error."""
    caplog.set_level(logging.INFO)
    logged = asyncio.Event()
    when_logged = Logged(lambda records: sum("status=499" in r for r in records) == 2, logged)
    logging.getLogger("settle.request").addHandler(when_logged)
    async with buggy(settings, store) as port:
        for path in ("/login", "/api/tokens"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: 1000\r\n\r\nusername=al".encode()
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        # The server notices each hang-up when it reads: wait for the requests' lines.
        async with asyncio.timeout(10):
            await logged.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("/metrics"))
        _, _, metrics = await read_response(reader)
        writer.close()
    logging.getLogger("settle.request").removeHandler(when_logged)
    assert sample(metrics.decode(), "settle_rejections_total", code="internal_error") == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    lines = [r.getMessage() for r in caplog.records if r.name != "settle.request"]
    assert lines == [], "nothing but the request lines"
    hung = [r for r in caplog.records if "status=499" in r.getMessage()]
    assert [r.levelno for r in hung] == [logging.INFO, logging.INFO]
    assert "method=POST path=/login status=499" in hung[0].getMessage()
