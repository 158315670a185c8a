"""Logs cannot be forged or leak (server/logs.py): control characters in any logged value
are escaped, and no query string is ever written, by settle or by uvicorn."""

from __future__ import annotations

import logging

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.logs import EscapingFormatter, NoQueryStrings, escape
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
