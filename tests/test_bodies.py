"""One limit on request bodies for every route, pages and forms included
(server/web/middleware.py): refused 413 before the body is read, parsed or spooled,
against a real uvicorn served as ``settle web`` serves, over raw sockets."""

from __future__ import annotations

import asyncio
import select
import socket

import orjson
import pytest

from server.settings import Settings
from server.store import Store
from server.web.middleware import MAX_BODY
from tests.test_protocol import exchange, parsed_head, served

MULTIPART = b"multipart/form-data; boundary=xyz"
FORM = b"application/x-www-form-urlencoded"


def post(path: bytes, kind: bytes, *fields: bytes) -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
        + kind
        + b"\r\n"
        + b"".join(f + b"\r\n" for f in fields)
        + b"\r\n"
    )


def file_part(size: int) -> bytes:
    return (
        b'--xyz\r\nContent-Disposition: form-data; name="csrf_token"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + b"a" * size
    )


@pytest.mark.parametrize(
    ("path", "accept", "shape"),
    [
        (b"/login", b"text/html", "html"),
        (b"/logout", b"text/html", "html"),
        (b"/accounts/acc_x/transfers", b"text/html", "html"),
        (b"/accounts/acc_x/preview", b"application/json", "json"),
        (b"/transfers/tr_x/cancel", b"text/html", "html"),
        (b"/api/tokens", b"*/*", "json"),
        (b"/nowhere", b"application/json", "json"),
    ],
)
async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    settings: Settings, store: Store, path: bytes, accept: bytes, shape: str
) -> None:
    """A 256 MiB upload declared up front: 413 at once, though the client has sent 1 KiB
    of it and stops there (before: /login read and spooled the whole body, then 403)."""
    head = post(path, MULTIPART, b"Content-Length: %d" % (256 << 20), b"Accept: " + accept)
    async with served(settings, store) as port:
        answer = await exchange(port, head + file_part(1024))
    status, fields, body = parsed_head(answer)
    assert status == 413, answer[:300]
    assert fields["connection"] == "close" and fields["x-content-type-options"] == "nosniff"
    if shape == "json":
        assert fields["content-type"] == "application/json"
        assert orjson.loads(body)["error"]["code"] == "payload_too_large"
    else:
        assert fields["content-type"].startswith("text/html")
        assert b"larger than 64 KiB" in body and fields["x-frame-options"] == "DENY"


@pytest.mark.parametrize("kind", [FORM, MULTIPART])
async def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(
    settings: Settings, store: Store, kind: bytes
) -> None:
    """A chunked form that never ends: 413 once 64 KiB have passed, without waiting for
    the rest (before: a 900 KB chunked form was read and parsed, then answered 403)."""
    chunk = b"a" * 8192
    data = (b"username=" if kind == FORM else file_part(0)) + chunk * 20
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in _pieces(data, 8192)]
    head = post(b"/login", kind, b"Transfer-Encoding: chunked")
    async with served(settings, store) as port:
        answer = await exchange(port, head, *chunks)  # no last chunk: the body never ends
    status, fields, body = parsed_head(answer)
    assert status == 413 and fields["connection"] == "close", answer[:300]
    assert fields["content-type"].startswith("text/html") and b"larger than 64 KiB" in body


async def test_a_body_at_the_limit_is_read(settings: Settings, store: Store) -> None:
    data = b"username=" + b"a" * (MAX_BODY - len(b"username="))
    head = post(b"/login", FORM, b"Content-Length: %d" % len(data), b"Connection: close")
    async with served(settings, store) as port:
        answer = await exchange(port, head + data)
    status, _, _ = parsed_head(answer)
    assert status == 403, "read whole, then refused for its missing CSRF cookie"


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_the_413_reaches_a_client_that_goes_on_sending_its_body(
    settings: Settings, store: Store
) -> None:
    """A client that sends its whole (too large) body before it reads, as most do: the
    server drops what follows the 413 unread for a moment, instead of closing on unread
    data, which resets the connection and loses the answer."""
    head = post(b"/api/tokens", MULTIPART, b"Content-Length: %d" % (3 << 20))
    body = file_part(3 << 20)[: 3 << 20]

    def upload(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(head)
                select.select([sock], [], [], 10)  # the 413 is in, unread
                sock.sendall(body)
            except OSError as exc:  # a client library gives up here, the answer unread
                return repr(exc).encode()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    async with served(settings, store) as port:
        for _ in range(3):
            answer = await asyncio.to_thread(upload, port)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
