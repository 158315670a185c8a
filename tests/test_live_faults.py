"""The WebSocket stream when things go wrong: Redis restarts, several web processes,
strangers, slow readers and abusive clients."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import random
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.domain.settlement import partition_of
from server.live.dispatch import Dispatcher, channel
from server.redisbox import redis_settings, start_redis_server, stop_redis_server
from server.settings import Settings
from server.store import Store, reads
from server.web.ws import same_origin
from tests.conftest import Stack, accept
from tests.test_live import close_code, recv, seq_of, server_stack, subscribe, ws_url


async def test_subscriber_gets_every_event_once_across_a_redis_restart(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    var = tmp_path / "redis2"
    var.mkdir()
    sock = var / "redis.sock"
    proc = start_redis_server(var, sock, appendonly=False)
    try:
        async with server_stack(settings, store, redis_url=f"unix://{sock}") as stack:
            alice, bob = await stack.customer("100.00"), await stack.customer("0")
            start = await seq_of(stack, alice)
            async with subscribe(stack.base_url, alice, start) as ws:
                await stack.transfer(alice, bob.account, "1.00")
                seen = [await recv(ws)]

                stop_redis_server(proc)
                for _ in range(2):  # committed while no one can hear the publish
                    await accept(store, alice.user_id, alice.account, bob.account, 100)
                proc = start_redis_server(var, sock, appendonly=False)
                # Only the hub's resync after reconnecting can deliver these two.
                seen += [await recv(ws) for _ in range(2)]

                # The restarted Redis lost the rings: ring again, as the sweeper would.
                slots = await reads.pending_slots_older_than(store, 2**62)
                parts = stack.settings.settle_partitions
                async with _dispatcher(stack.settings) as dispatch:
                    await dispatch.ring({partition_of(s, parts) for s in slots})
                await stack.settle_all()
                seen += [await recv(ws) for _ in range(3)]
            assert [e["seq"] for e in seen] == list(range(start + 1, start + 7))
            assert [e["type"] for e in seen] == ["transfer.pending"] * 3 + [
                "transfer.completed"
            ] * 3
            assert seen[-1]["balance"] == (await stack.account(alice))["balance"]
    finally:
        stop_redis_server(proc)


@contextlib.asynccontextmanager
async def _dispatcher(settings: Settings) -> Any:
    from arq import create_pool

    redis = await create_pool(redis_settings(settings, settings.redis_url or ""))
    try:
        yield Dispatcher(redis, settings)
    finally:
        await redis.aclose()


async def test_subscriber_on_one_web_process_sees_a_transfer_accepted_on_another(
    stack: Stack, store: Store
) -> None:
    async with server_stack(stack.settings, store, own_store=True) as other:
        alice, bob = await stack.customer("100.00"), await stack.customer("0")
        start = await seq_of(stack, bob)
        async with subscribe(other.base_url, bob, start) as ws:
            tid = (await stack.transfer(alice, bob.account, "5.00")).json()["id"]
            pending = await recv(ws)
            assert (pending["type"], pending["transfer"]["id"]) == ("transfer.pending", tid)
            await stack.settle_all()
            done = await recv(ws)
            assert (done["type"], done["seq"]) == ("transfer.completed", start + 2)
            assert done["balance"] == (await other.account(bob))["balance"]


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no credentials", 4401),
        ("unknown token", 4401),
        ("another user's account", 4403),
        ("no such account", 4403),
        ("no account", 4400),
        ("negative since", 4400),
        ("since not a number", 4400),
        ("since a superscript digit", 4400),
    ],
)
async def test_subscription_is_refused_with_a_close_code(
    stack: Stack, case: str, code: int
) -> None:
    alice, mallory = await stack.customer("10.00"), await stack.customer("0")
    headers, account, since = mallory.headers, mallory.account, ""
    if case == "no credentials":
        headers = {}
    elif case == "unknown token":
        headers = {"Authorization": "Bearer stl_not-a-token"}
    elif case == "another user's account":
        account = alice.account
    elif case == "no such account":
        account = "acc_doesnotexist"
    elif case == "no account":
        account = ""
    elif case == "negative since":
        since = "&since=-1"
    elif case == "since a superscript digit":
        since = "&since=%C2%B2"  # "²": str.isdigit() says yes, int() says no
    else:
        since = "&since=1.5"
    url = ws_url(stack.base_url, account) + since
    async with connect(url, additional_headers=headers) as ws:
        assert await close_code(ws) == code


async def test_a_socket_never_receives_another_accounts_events(stack: Stack) -> None:
    alice = await stack.customer("50.00")
    bob, carol = await stack.customer("0"), await stack.customer("20.00")
    start = await seq_of(stack, carol)
    async with subscribe(stack.base_url, carol, start) as ws:
        for _ in range(3):
            await stack.transfer(alice, bob.account, "1.00")
        await stack.settle_all()
        await stack.transfer(carol, bob.account, "2.00")
        mine = await recv(ws)
        assert (mine["account"], mine["seq"]) == (carol.account, start + 1)
        await stack.settle_all()
        assert (await recv(ws))["account"] == carol.account


async def test_a_subscriber_that_stops_reading_is_closed_1013_and_others_keep_up(
    settings: Settings, store: Store
) -> None:
    async with server_stack(settings, store, ws_queue_size=4) as stack:
        alice = await stack.customer("10.00")
        start = await seq_of(stack, alice)
        # A raw client that stops reading after the handshake: the server's writes back
        # up (client buffers, then the server's) and then its queue overflows.
        slow = await raw_websocket(
            stack.base_url, f"/ws?account={alice.account}&since={start}", alice.headers
        )
        try:
            # These events are made up (not in the log), so they reach only sockets
            # subscribed when they are published: a completed handshake guarantees that.
            async with (
                subscribe(stack.base_url, alice, start) as fast,
                Redis.from_url(stack.settings.redis_url or "") as redis,
            ):
                big = "x" * 64_000
                for seq in range(start + 1, start + 201):
                    message = {"type": "transfer.pending", "account": alice.account, "seq": seq}
                    await redis.publish(
                        channel(stack.settings, alice.account),
                        orjson.dumps({**message, "transfer": {"memo": big}, "balance": {}}),
                    )
                    # One at a time: the fast subscriber's queue never holds more than one.
                    assert (await recv(fast))["seq"] == seq
                code, reason = await asyncio.wait_for(read_until_close(slow[0]), 30)
                assert code == 1013 and "since" in reason
        finally:
            slow[1].close()
            with contextlib.suppress(OSError):
                await slow[1].wait_closed()


async def raw_websocket(
    base_url: str, target: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand on a socket with a tiny receive buffer, so that
    not reading really stops the flow (a library client would read ahead)."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer


async def read_until_close(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Skip server frames (unmasked) up to the close frame; its code and reason."""
    while True:
        head = await reader.readexactly(2)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(size)
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()


@pytest.mark.parametrize(
    ("abuse", "code"),
    [("binary", 1008), ("huge", 1009), ("flood", 1008)],
)
async def test_abusive_client_messages_close_the_socket_and_the_server_keeps_serving(
    stack: Stack, abuse: str, code: int
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    async with subscribe(stack.base_url, alice) as ws:
        with contextlib.suppress(Exception):
            if abuse == "binary":
                await ws.send(b"\x00\x01")
            elif abuse == "huge":
                await ws.send("x" * 5000)
            else:
                for _ in range(100):
                    await ws.send('{"type":"hello"}')
        assert await close_code(ws) == code
    start = await seq_of(stack, alice)
    async with subscribe(stack.base_url, alice, start) as ws:
        await ws.send('{"type":"hello"}')  # a few small messages are fine
        await stack.transfer(alice, bob.account, "1.00")
        assert (await recv(ws))["seq"] == start + 1
    await stack.settle_all()


@pytest.mark.parametrize(
    ("origin", "scheme", "allowed"),
    [
        ("http://bank.example", "ws", True),
        ("https://bank.example", "wss", True),
        ("http://BANK.example", "ws", True),
        ("https://bank.example", "ws", False),
        ("http://evil.example", "ws", False),
        ("http://bank.example.evil.example", "ws", False),
        ("null", "ws", False),
        (None, "ws", False),
    ],
)
def test_session_sockets_must_come_from_the_apps_own_origin(
    origin: str | None, scheme: str, allowed: bool
) -> None:
    headers = [(b"host", b"bank.example")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {"type": "websocket", "scheme": scheme, "path": "/ws", "headers": headers}
    assert same_origin(WebSocket(scope, _never, _never)) is allowed


async def _never(*args: Any) -> Any:
    raise AssertionError("not called")


FUZZ_CASES = 80


def fuzz_case(rng: random.Random, own: str, others: list[str]) -> tuple[str, list[str | bytes]]:
    """A random query string (some parts valid, some hostile) and client frames."""
    parts = _fuzz_query(rng, own, others)
    frames: list[str | bytes] = []
    for _ in range(rng.randint(0, 3)):
        frames.extend(_fuzz_frames(rng, others))
    return "&".join(parts), frames


def _fuzz_query(rng: random.Random, own: str, others: list[str]) -> list[str]:
    accounts = [own, *others, "", "acc_" + "x" * rng.randint(1, 3000), "%00%ff", "&since=1"]
    parts = []
    if rng.random() < 0.9:
        parts.append("account=" + (own if rng.random() < 0.5 else rng.choice(accounts)))
    if rng.random() < 0.3:  # a second account parameter, perhaps another's
        parts.append("account=" + rng.choice(accounts))
    since = [str(rng.randint(0, 50)), "-1", "1.5", "1e3", str(10**30), "", "%20", "nan"]
    if rng.random() < 0.7:
        parts.append("since=" + (since[0] if rng.random() < 0.5 else rng.choice(since)))
    if rng.random() < 0.3:
        parts.append("fragments=" + rng.choice(["1", "0", "yes", ""]))
    if rng.random() < 0.2:
        junk = (chr(rng.randint(33, 126)) for _ in range(rng.randint(1, 40)))
        parts.append("".join(junk).replace("#", "%23"))  # a "#" would end the URL
    rng.shuffle(parts)
    return parts


def _fuzz_frames(rng: random.Random, others: list[str]) -> list[str | bytes]:
    kind = rng.choice(["text", "binary", "huge", "flood", "json"])
    if kind == "text":
        return ["".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 200)))]
    if kind == "binary":
        return [rng.randbytes(rng.randint(0, 10_000))]
    if kind == "huge":
        return ["x" * rng.randint(4097, 100_000)]
    if kind == "flood":
        return ['{"type":"hello"}'] * 60
    return [f'{{"type":"subscribe","account":"{rng.choice(others)}"}}']


async def test_fuzzed_queries_and_frames_never_leak_or_crash(stack: Stack) -> None:
    """Seeded random handshakes and frames from a user: every socket either subscribes to
    that user's own account or is refused/closed with a close code; no message ever
    carries another account; the server keeps serving throughout."""
    mallory = await stack.customer("30.00")
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    for who in (alice, mallory):
        assert (await stack.transfer(who, bob.account, "1.00")).status_code == 202
    await stack.settle_all()
    rng = random.Random(7)
    allowed = {1000, 1008, 1009, 1013, 4400, 4401, 4403}
    outcomes: collections.Counter[str] = collections.Counter()
    base = f"ws{stack.base_url.removeprefix('http')}/ws?"
    for _ in range(FUZZ_CASES):
        query, frames = fuzz_case(rng, mallory.account, [alice.account, bob.account])
        try:
            async with connect(base + query, additional_headers=mallory.headers) as ws:
                with contextlib.suppress(ConnectionClosed):
                    for frame in frames:
                        await ws.send(frame)
                    while True:
                        message = orjson.loads(await asyncio.wait_for(ws.recv(), 0.2))
                        assert message.get("account", mallory.account) == mallory.account, (
                            query,
                            message,
                        )
        except TimeoutError:
            outcomes["open"] += 1  # subscribed, nothing more to say: fine
            continue
        except InvalidStatus as exc:  # refused before the handshake (a URL too long)
            assert exc.response.status_code in (400, 414), query
            outcomes[f"http {exc.response.status_code}"] += 1
            continue
        assert ws.close_code in allowed, (query, ws.close_code)
        outcomes[f"close {ws.close_code}"] += 1
    # Both kinds happened: the fuzzer reached past the handshake and was refused too.
    assert outcomes["open"] and sum(v for k, v in outcomes.items() if k != "open"), outcomes
    assert (await stack.client.get("/readyz")).status_code == 200
    start = await seq_of(stack, mallory)
    async with subscribe(stack.base_url, mallory, start) as ws:
        await stack.transfer(mallory, bob.account, "1.00")
        assert (await recv(ws))["seq"] == start + 1
    await stack.settle_all()
