"""The limits a client cannot stretch (server/web/protocol.py), against a real uvicorn served
as ``settle web`` serves, over raw sockets: header size, slow headers and bodies, the
connection cap, and WebSocket messages refused before they are buffered."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import select
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.settings import Settings
from server.store import Store
from server.web import protocol
from server.web.app import create_app
from tests.conftest import Stack, free_socket
from tests.test_live import ws_url


class Quick(protocol.GuardedHttp):
    """The same protocol with timeouts short enough to wait for in a test."""

    header_timeout_s = 0.3
    body_timeout_s = 0.3


@contextlib.asynccontextmanager
async def served(settings: Settings, store: Store, **options: Any) -> AsyncIterator[int]:
    """settle on uvicorn with settle's options (and ``options`` over them); its port."""
    sock = free_socket()
    config = uvicorn.Config(
        create_app(settings, store=store),
        log_level="warning",
        **{**protocol.uvicorn_options(settings), **options},
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.005)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


async def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` (``pause`` apart) until the server answers, as a client would, and
    return all it answered until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    reading = asyncio.create_task(read_all())
    try:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                if answer or reading.done():
                    break
                writer.write(part)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        await asyncio.wait_for(reading, 10)
        return bytes(answer)
    finally:
        writer.transport.abort()


def head(extra: bytes = b"") -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra


async def test_headers_over_16_kib_are_refused_431_before_they_are_read(
    settings: Settings, store: Store
) -> None:
    async with served(settings, store) as port:
        fine = await exchange(
            port, head(b"X-Pad: " + b"a" * 15_000 + b"\r\nConnection: close\r\n\r\n")
        )
        assert fine.startswith(b"HTTP/1.1 200")
        # A megabyte of header in one go: refused as soon as 16 KiB have arrived.
        big = await exchange(port, head(b"X-Pad: " + b"a" * (1 << 20) + b"\r\n\r\n"))
        assert big.startswith(b"HTTP/1.1 431 ") and b'"code":"headers_too_large"' in big
        # Many small headers add up the same way.
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 60) for i in range(400))
        assert (await exchange(port, head(many + b"\r\n"))).startswith(b"HTTP/1.1 431 ")


async def test_a_websocket_handshake_too_long_for_the_websocket_library_gets_431(
    settings: Settings, store: Store
) -> None:
    """websockets refuses handshake lines over 8 KiB, and uvicorn then never answered:
    the client hung until its own timeout."""
    upgrade = (
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    async with served(settings, store) as port:
        line = b"GET /ws?since=" + b"9" * 8200 + b" HTTP/1.1\r\nHost: x\r\n"
        assert (await exchange(port, line + upgrade)).startswith(b"HTTP/1.1 431 ")
        header = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8200 + b"\r\n"
        assert (await exchange(port, header + upgrade)).startswith(b"HTTP/1.1 431 ")


async def test_a_client_trickling_its_headers_or_body_is_cut_off_with_408(
    settings: Settings, store: Store
) -> None:
    async with served(settings, store, http=Quick) as port:
        # Headers never finished.
        answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert answer.startswith(b"HTTP/1.1 408 ")
        # Headers one byte at a time, each in time for the last, never in time overall.
        trickled = [bytes([b]) for b in head(b"X-Slow: yes\r\n" * 10)]
        answer = await exchange(port, *trickled, pause=0.02)
        assert answer.startswith(b"HTTP/1.1 408 ")
        # A body that never comes.
        post = (
            b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        assert (await exchange(port, post)).startswith(b"HTTP/1.1 408 ")


class SmallReserve(protocol.GuardedHttp):
    """The same protocol with a reserve small enough to fill in a test."""

    reserve = 2


async def test_connections_over_the_cap_get_503_but_health_checks_get_the_reserve(
    settings: Settings, store: Store
) -> None:
    """With the cap full, a connection of the reserve is answered /healthz and /readyz
    (once, then closed) and 503 for anything else; with the reserve full too, 503 at
    once, before a byte is sent. (Before: /healthz answered 503 once the cap was full.)"""
    capped = dataclasses.replace(settings, max_connections=3)
    async with served(capped, store, http=SmallReserve) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            for path in (b"/healthz", b"/readyz"):
                answer = await exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (
                    answer.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in answer
                )
            for request in (b"GET /api/accounts", b"GET /ws", b"POST /healthz", b"GET /"):
                refused = await exchange(port, request + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (
                    refused.startswith(b"HTTP/1.1 503 ") and b"too many open connections" in refused
                )
            # The reserve full too: refused at once, without waiting for a request.
            held += [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert refused.startswith(b"HTTP/1.1 503 ")
        finally:
            for _, writer in held:
                writer.close()
        # Once they are gone, the server serves again.
        for _ in range(50):
            answer = await exchange(port, head(b"Connection: close\r\n\r\n"))
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.02)
        assert answer.startswith(b"HTTP/1.1 200")


class QuickIdle(Quick):
    idle_timeout_s = 0.3
    header_timeout_s = 1.0


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection (within 10 s, or fail)."""
    return await asyncio.wait_for(reader.read(), 10)


async def test_a_silent_connection_is_closed_from_accept_and_between_requests(
    settings: Settings, store: Store
) -> None:
    """A socket that never sends a byte, a kept-alive one that goes quiet, and one whose
    answer came before its body did, then went quiet: each is closed, with nothing
    written. (Before: the first and the last were held open forever.)"""
    async with served(settings, store, http=QuickIdle) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(b"\r\n"))
        answer = await closed_by_server(reader)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in answer
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        assert (await reader.readuntil(b"}}")).startswith(b"HTTP/1.1 404 ")
        writer.write(b"12345")
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_a_websocket_outlives_the_idle_timeout_of_the_connection_it_upgraded(
    settings: Settings, store: Store
) -> None:
    """The idle timer is for a connection waiting for its next request; a WebSocket is
    past that, and stays open however long it is quiet, then gets what happens later.
    (Before: the timer the handshake's request armed closed the socket, with no close
    frame, one idle timeout after it opened: every page and subscriber reconnected every
    5 s, and a benchmark's subscribers missed half their events.)"""
    async with served(settings, store, http=QuickIdle) as port:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            stack = Stack(settings, store, url, client)
            alice, bob = await stack.customer(), await stack.customer()
            async with connect(ws_url(url, alice.account), additional_headers=alice.headers) as ws:
                # Three idle timeouts of quiet: a close would end this wait early.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3 * QuickIdle.idle_timeout_s):
                        async for _ in ws:
                            pass
                assert ws.close_code is None
                assert (await stack.transfer(alice, bob.account, "1.00")).status_code == 202
                async with asyncio.timeout(10):
                    while orjson.loads(await ws.recv()).get("type") != "transfer.pending":
                        pass


async def test_a_websocket_frame_over_4_kib_is_refused_1009_unread(stack: Stack) -> None:
    alice = await stack.customer()
    async with connect(
        ws_url(stack.base_url, alice.account), additional_headers=alice.headers
    ) as ws:
        # The frame header announces 16 MiB; the server must close without waiting for it.
        await ws.send("x" * (protocol.WS_MAX_MESSAGE + 1))
        try:
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        assert ws.close_code == 1009


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (masked with a zero key, which leaves the payload as it is)."""
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    else:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


async def test_a_refused_frame_reaches_the_client_as_a_close_frame_not_a_reset(
    stack: Stack,
) -> None:
    """The client goes on sending after its bad frame, as clients do, before it reads the
    server's close: its sends must not fail, and the close must arrive. (uvicorn alone
    closed the socket at once; the kernel answered the late frames with a reset, and a
    client library, failing to send, gave up with the close frame unread: 1006.)"""
    alice = await stack.customer()
    url = httpx.URL(ws_url(stack.base_url, alice.account))
    bad = [(0x1, b"\xfe\xff", 1007), (0x2, b"x" * (protocol.WS_MAX_MESSAGE + 1), 1009)]

    def attempt(opcode: int, payload: bytes) -> bytes:
        with socket.create_connection((url.host, url.port or 80), timeout=10) as sock:
            head = [
                f"GET {url.raw_path.decode()} HTTP/1.1",
                f"Host: {url.host}:{url.port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
                *(f"{k}: {v}" for k, v in alice.headers.items()),
            ]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 101"), answer
            sock.sendall(_frame(opcode, payload))
            # The server's close frame is in our receive buffer (unread) once it is
            # readable; then the client's next frames arrive at the server.
            select.select([sock], [], [], 10)
            try:
                for _ in range(5):
                    sock.sendall(_frame(0x1, b"y" * 1000))
                    time.sleep(0.01)  # each its own segment, as a real client's would be
                return sock.recv(64)
            except OSError as exc:  # a client library gives up here, close frame unread
                return repr(exc).encode()

    for opcode, payload, code in bad * 3:
        got = await asyncio.to_thread(attempt, opcode, payload)
        assert got[:1] == b"\x88", f"wanted a close frame ({code}), got {got!r}"
        assert int.from_bytes(got[2:4], "big") == code


async def test_no_server_header_and_api_answers_are_not_cached(stack: Stack) -> None:
    alice = await stack.customer()
    r = await stack.client.get(f"/api/accounts/{alice.account}", headers=alice.headers)
    assert "server" not in r.headers
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in r.headers, "plain HTTP: no HSTS"
    # Behind a TLS proxy (uvicorn trusts X-Forwarded-Proto from loopback): HSTS.
    https = await stack.client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert https.headers["strict-transport-security"].startswith("max-age=")
    static = await stack.client.get("/static/settle.css")
    assert "no-store" not in static.headers.get("cache-control", "")


def parsed_head(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """An answer as written on the wire: its status, headers (each once) and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in fields, f"{name} twice"
        fields[name.lower()] = value.strip()
    assert int(fields["content-length"]) == len(body)
    return int(status_line.split()[1]), fields, body


def parsed(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A refusal as written on the wire: its status, headers and JSON body."""
    status, fields, body = parsed_head(answer)
    return status, fields, orjson.loads(body)


async def test_the_protocol_s_own_refusals_carry_every_header_and_the_error_shape(
    settings: Settings, store: Store
) -> None:
    """431, 408, 503 and the 400 of a request uvicorn's parser refuses: JSON errors with
    nosniff, Referrer-Policy, no-store and `Connection: close`. (Before: no nosniff, and
    the 400 was uvicorn's text/plain.)"""
    refusals = {}
    async with served(settings, store, http=Quick) as port:
        refusals[431] = await exchange(port, head(b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"))
        refusals[408] = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        refusals[400] = await exchange(port, head(b"Bad\x01Name: 1\r\n\r\n"))
    async with served(dataclasses.replace(settings, max_connections=1), store) as port:
        _, held = await asyncio.open_connection("127.0.0.1", port)
        refusals[503] = await exchange(port, b"GET /api/accounts HTTP/1.1\r\nHost: x\r\n\r\n")
        held.close()
    codes = {
        400: "bad_request",
        408: "request_timeout",
        431: "headers_too_large",
        503: "service_unavailable",
    }
    for status, answer in refusals.items():
        got, fields, body = parsed(answer)
        assert got == status
        assert body["error"]["code"] == codes[status] and body["error"]["message"]
        assert fields["content-type"] == "application/json"
        assert fields["x-content-type-options"] == "nosniff"
        assert fields["referrer-policy"] == "same-origin"
        assert fields["cache-control"] == "no-store"
        assert fields["connection"] == "close"


async def test_a_refused_websocket_handshake_is_answered_in_the_error_shape(
    settings: Settings, store: Store
) -> None:
    """A handshake the WebSocket library refuses (here: no Sec-WebSocket-Key). Before:
    its text/plain 400, without nosniff."""
    async with served(settings, store) as port:
        answer = await exchange(
            port,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
        )
    status, fields, body = parsed(answer)
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert "Sec-WebSocket-Key" in body["error"]["message"]
    assert fields["content-type"] == "application/json"
    assert fields["x-content-type-options"] == "nosniff" and fields["cache-control"] == "no-store"
    assert fields["connection"] == "close"
