"""Logs cannot be forged or leak (server/logs.py): control characters in any logged value
are escaped, and no query string is ever written, by settle or by uvicorn."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.logs import EscapingFormatter, NoQueryStrings, escape
from server.settings import LOG_FORMAT
from tests.conftest import free_port
from tests.fleet import Fleet


def test_control_characters_are_escaped() -> None:
    assert escape("a\nb\r\x00c\x1b[31m\u2028") == "a\\x0ab\\x0d\\x00c\\x1b[31m\\u2028"
    assert escape("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


def test_a_record_is_one_line_whatever_its_arguments() -> None:
    record = logging.LogRecord(
        "settle.request", logging.INFO, __file__, 1, "request path=%s", ("/x\nFAKE line",), None
    )
    line = EscapingFormatter("%(message)s").format(record)
    assert line == "request path=/x\\x0aFAKE line"


def test_a_traceback_is_folded_into_its_record_s_one_line() -> None:
    """A traceback (an error's, or a stack a library asks for) stays on its record's line,
    escaped: no line of the log is a loose fragment of another record."""
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), exc_info
    )
    record.stack_info = "Stack (most recent call last):\n  File x"
    line = EscapingFormatter(LOG_FORMAT).format(record)
    assert "\n" not in line and "\r" not in line
    assert "ERROR uvicorn.error Exception in ASGI application\\x0a" in line
    assert "Traceback (most recent call last):\\x0a" in line
    assert line.count("ValueError: bad\\x0avalue") == 1 and line.endswith("File x")


def test_uvicorn_websocket_lines_lose_their_query_string() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/ws?account=acc_1&token=stl_secret"),
        None,
    )
    NoQueryStrings().filter(record)
    assert "stl_secret" not in record.getMessage() and "/ws" in record.getMessage()


async def test_a_running_server_writes_no_forged_line_and_no_query_string(fleet: Fleet) -> None:
    port = free_port()
    fleet.start("web", "web", PORT=str(port), HOST="127.0.0.1")
    await fleet.ready(port)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as client:
        await client.get("/nope%0a2026-01-01 00:00:00,000 INFO settle.request FORGED")
        await client.get("/nul%00byte")
        await client.get("/api/accounts?token=stl_query_secret")
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws?account=acc_x&token=stl_ws_secret"):
            pass
    except InvalidStatus:
        pass
    fleet.stop_all()
    log = (fleet.logs / "web.log").read_bytes()
    assert b"\x00" not in log
    lines = log.decode().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines), "a forged line"
    assert any("\\x0a2026-01-01" in line for line in lines)
    assert b"stl_query_secret" not in log and b"stl_ws_secret" not in log


RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ "
)


async def test_clients_hanging_up_mid_body_leave_one_info_line_each(fleet: Fleet) -> None:
    """A running `settle web`: each hang-up is its request's one line, at INFO; every line
    of the log is a whole record, uvicorn's included. (Before: two multi-line ERROR
    tracebacks per hang-up, settle's and uvicorn's.)"""
    port = free_port()
    fleet.start("web", "web", PORT=str(port), HOST="127.0.0.1")
    await fleet.ready(port)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 10000\r\n\r\n--b\r\nContent-Disposition: "
            b'form-data; name="username"\r\n\r\nalice\r\n--b\r\n'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # uvicorn's own line for a request it cannot parse is a record too.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n")
    assert (await reader.read(100)).startswith(b"HTTP/1.1 400 ")
    writer.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/healthz")).status_code == 200
    fleet.stop_all()
    lines = (fleet.logs / "web.log").read_text().splitlines()
    loose = [line for line in lines if not RECORD.match(line)]
    assert loose == [], "lines that are no record of their own"
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line]
    hung = [line for line in lines if "path=/login" in line]
    assert len(hung) == 3 and all(" INFO settle.request " in line for line in hung), hung
    assert all("status=499" in line for line in hung)
    assert any("WARNING uvicorn.error Invalid HTTP request" in line for line in lines)
