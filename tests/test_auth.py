"""Ending a credential ends everything opened with it (server/web/auth.py, server/live/hub.py):
revoking a token, logging out, or expiry closes its live streams with 4401 within a
second, in every web process (two real ``settle web`` subprocesses here). And every
failed login costs the same."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.settings import Settings
from server.store import Store
from server.store import accounts as admin
from server.web import auth, passwords, sessions
from tests.conftest import Customer, Stack, free_port
from tests.fleet import Fleet
from tests.test_live import ws_url
from tests.test_sessions import attempt, login

CLOSED_WITHIN_S = 1.0


async def two_web_processes(fleet: Fleet) -> list[str]:
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        fleet.start(f"web{i}", "web", PORT=str(port), HOST="127.0.0.1")
    for port in ports:
        await fleet.ready(port)
    return [f"http://127.0.0.1:{port}" for port in ports]


async def customer(store: Store, name: str) -> Customer:
    user_id, account = await admin.create_user(store, name, passwords.hash_password("pw-" + name))
    return Customer(name, user_id, account, await auth.issue_token(store, user_id, 3600))


async def closed_with(ws: ClientConnection, within: float) -> int | None:
    """The close code the server ends ``ws`` with, waiting at most ``within`` seconds."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(within):
            async for _ in ws:
                pass
    return ws.close_code


@contextlib.asynccontextmanager
async def streams(
    urls: list[str], account: str, headers: dict[str, str]
) -> AsyncIterator[list[ClientConnection]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                connect(ws_url(url, account), additional_headers=headers)
            )
            for url in urls
        ]


async def test_revoking_a_token_closes_its_streams_in_every_process_within_1_s(
    store: Store, fleet: Fleet
) -> None:
    urls = await two_web_processes(fleet)
    alice = await customer(store, "alice")
    async with httpx.AsyncClient(base_url=urls[1]) as other:
        # The other process has just seen the token live (and remembers so).
        assert (await other.get("/api/accounts", headers=alice.headers)).status_code == 200
        async with streams(urls, alice.account, alice.headers) as sockets:
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                r = await client.delete("/api/tokens", headers=alice.headers)
                assert r.status_code == 204
            codes = await asyncio.gather(*(closed_with(ws, CLOSED_WITHIN_S) for ws in sockets))
        assert codes == [4401, 4401]
        # Its streams ended there, so it has forgotten the token too: no request either.
        assert (await other.get("/api/accounts", headers=alice.headers)).status_code == 401


async def test_logging_out_closes_the_session_streams_in_every_process_within_1_s(
    store: Store, fleet: Fleet
) -> None:
    urls = await two_web_processes(fleet)
    alice = await customer(store, "alice")
    async with httpx.AsyncClient(base_url=urls[0]) as browser:
        csrf = await login(browser, alice)
        cookie = {"Cookie": f"{sessions.COOKIE}={browser.cookies[sessions.COOKIE]}"}
        sockets = []
        async with contextlib.AsyncExitStack() as stack:
            for url in urls:
                host = url.removeprefix("http://")
                headers = {**cookie, "Origin": url, "Host": host}
                sockets.append(
                    await stack.enter_async_context(
                        connect(ws_url(url, alice.account), additional_headers=headers)
                    )
                )
            r = await browser.post("/logout", data={"csrf_token": csrf})
            assert r.status_code == 303
            codes = await asyncio.gather(*(closed_with(ws, CLOSED_WITHIN_S) for ws in sockets))
    assert codes == [4401, 4401]


async def test_a_stream_ends_when_its_token_expires(stack: Stack) -> None:
    alice = await stack.customer("0")
    short = await auth.issue_token(stack.store, alice.user_id, 1)
    headers = {"Authorization": f"Bearer {short}"}
    async with connect(ws_url(stack.base_url, alice.account), additional_headers=headers) as ws:
        assert await closed_with(ws, 5) == 4401


async def test_a_new_login_ends_the_streams_of_the_session_it_replaces(stack: Stack) -> None:
    alice = await stack.customer("0")
    async with httpx.AsyncClient(base_url=stack.base_url) as browser:
        await login(browser, alice)
        old = browser.cookies[sessions.COOKIE]
        host = stack.base_url.removeprefix("http://")
        headers = {"Cookie": f"{sessions.COOKIE}={old}", "Origin": stack.base_url, "Host": host}
        async with connect(ws_url(stack.base_url, alice.account), additional_headers=headers) as ws:
            await login(browser, alice)
            assert await closed_with(ws, CLOSED_WITHIN_S) == 4401


async def test_every_failed_login_costs_one_scrypt(stack: Stack, settings: Settings) -> None:
    """An unknown user, the bank (whose hash no password matches) and a wrong password
    each cost exactly one scrypt: response times tell nothing apart."""
    alice = await stack.customer("10.00")  # funding it creates the bank
    calls: list[Any] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs.get("n"))
        return real(*args, **kwargs)

    hashlib.scrypt = counting
    try:
        async with httpx.AsyncClient(base_url=stack.base_url) as client:
            costs = []
            for username in ("nobody-at-all", admin.BANK_USERNAME, alice.username):
                calls.clear()
                r = await attempt(client, username, "not-the-password")
                assert r.status_code == 401, username
                assert len(calls) == 1, f"{username}: {len(calls)} hashes"
                costs.append(calls[0])
    finally:
        hashlib.scrypt = real
    assert len(set(costs)) == 1, f"every failure hashes at one cost: {costs}"
