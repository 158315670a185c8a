"""``settle watch`` as a real subprocess, and HTML fragments for htmx sockets."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest
from websockets.asyncio.client import connect

from server.domain.events import Event
from server.live.hub import Hub
from server.settings import Settings
from server.store import Store
from tests.conftest import Stack, settings_env
from tests.test_dispatch import event as sample_event
from tests.test_live import TIMEOUT, recv, seq_of, subscribe, ws_url


async def watch(
    stack: Stack, account: str, since: int, creds: list[str]
) -> asyncio.subprocess.Process:
    """``settle watch ACCOUNT --since SEQ`` as a subprocess, its stdout piped (--since
    makes it replay what it missed while starting: no race)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "watch",
        account,
        "--since",
        str(since),
        "--url",
        stack.base_url,
        *creds,
        stdout=asyncio.subprocess.PIPE,
        env=settings_env(stack.settings),
    )


@pytest.mark.parametrize("login", ["token", "password"])
async def test_settle_watch_prints_pending_then_completed(stack: Stack, login: str) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    since = await seq_of(stack, alice)
    creds = (
        ["--token", alice.token]
        if login == "token"
        else ["--username", alice.username, "--password", "pw-" + alice.username]
    )
    proc = await watch(stack, alice.account, since, creds)
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


async def test_htmx_sockets_get_the_page_fragments_with_each_event(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    since = await seq_of(stack, alice)
    htmx_url = ws_url(stack.base_url, alice.account, since, fragments="1")
    async with (
        connect(htmx_url, additional_headers=alice.headers) as one,
        connect(htmx_url, additional_headers=alice.headers) as two,
        subscribe(stack.base_url, alice, since) as plain,
    ):
        tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
        first, second = await recv(one), await recv(two)
        assert first == second
        assert f'id="row-{tid}"' in first["content"]
        assert f'id="balance-{alice.account}"' in first["content"] and "$9.00" in first["content"]
        assert "content" not in await recv(plain)
    await stack.settle_all()


async def test_a_fragment_is_rendered_once_per_event_not_once_per_socket(
    settings: Settings, store: Store
) -> None:
    rendered: list[int] = []

    def render(message: Event) -> str:
        rendered.append(message.seq)
        return f"<p>{message.seq}</p>"

    hub = Hub(settings, store, render=render)
    subs = [hub.subscribe("acc_x", "alice", 0, fragments=True) for _ in range(3)]
    hub.fan_out("acc_x", sample_event("acc_x", 1).payload)
    texts = [sub.encode(item) for sub in subs for item in await sub.deliver_all(sub.queue.take())]
    assert len(texts) == 3 and len(set(texts)) == 1 and '"content":"<p>1</p>"' in texts[0]
    assert rendered == [1]


async def test_settle_watch_prints_awaiting_confirmation_then_cancelled(stack: Stack) -> None:
    from tests.test_confirmations import give_passkey

    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    since = await seq_of(stack, alice)
    proc = await watch(stack, alice.account, since, ["--token", alice.token])
    try:
        assert proc.stdout is not None
        tid = (await stack.transfer(alice, bob.account, "1500.00")).json()["id"]
        first = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
        await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
        second = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
        assert [(e["type"], e["transfer"]["status"]) for e in (first, second)] == [
            ("transfer.awaiting_confirmation", "awaiting_confirmation"),
            ("transfer.cancelled", "cancelled"),
        ]
        assert first["transfer"]["next_action"]["url"] == f"/transfers/{tid}/confirm"
        assert first["balance"]["available"] == "3500.00"
    finally:
        proc.terminate()
        await proc.wait()
