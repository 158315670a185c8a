"""``settle watch`` as a real subprocess, and HTML fragments for htmx sockets."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from server.app import create_app
from server.auth import User
from server.db import Store
from server.settings import Settings
from tests.conftest import Stack, serve, settings_env
from tests.test_live import TIMEOUT, recv, seq_of, subscribe, ws_url


@pytest.mark.parametrize("login", ["token", "password"])
async def test_settle_watch_prints_pending_then_completed(stack: Stack, login: str) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    since = await seq_of(stack, alice)
    creds = (
        ["--token", alice.token]
        if login == "token"
        else ["--username", alice.username, "--password", "pw-" + alice.username]
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "watch",
        alice.account,
        "--since",
        str(since),
        "--url",
        stack.base_url,
        *creds,
        stdout=asyncio.subprocess.PIPE,
        env=settings_env(stack.settings),
    )
    try:
        assert proc.stdout is not None
        # --since makes the watcher replay what it missed while starting: no race.
        tid = (await stack.transfer(alice, bob.account, "3.00")).json()["id"]
        first = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
        await stack.settle_all()
        second = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
        assert [(e["type"], e["seq"], e["transfer"]["id"]) for e in (first, second)] == [
            ("transfer.pending", since + 1, tid),
            ("transfer.completed", since + 2, tid),
        ]
    finally:
        proc.terminate()
        await proc.wait()


def render_content(message: dict[str, Any], user: User) -> str:
    return f"<li>{message['type']} for {user.username}</li>"


async def test_htmx_sockets_get_an_html_fragment_with_each_event(
    settings: Settings, store: Store
) -> None:
    app = create_app(settings, store=store)

    async def with_renderer(scope: Any, receive: Any, send: Any) -> None:
        # What the pages module does through lifespan state, without depending on it.
        if scope["type"] == "websocket":
            scope["state"]["render_content"] = render_content
        await app(scope, receive, send)

    async with (
        serve(with_renderer) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        stack = Stack(settings, store, url, client)
        alice, bob = await stack.customer("10.00"), await stack.customer("0")
        since = await seq_of(stack, alice)
        htmx_url = ws_url(url, alice.account, since, fragments="1")
        async with connect(htmx_url, additional_headers=alice.headers) as htmx:
            async with subscribe(url, alice, since) as plain:
                await stack.transfer(alice, bob.account, "1.00")
                event = await recv(htmx)
                assert event["content"] == f"<li>transfer.pending for {alice.username}</li>"
                assert "content" not in await recv(plain)
        await stack.settle_all()
