"""The WebSocket stream against a real uvicorn server, a real Redis, a real arq worker
and the real ``websockets`` client: order, exactly-once, resume, snapshot, gap fill."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.domain.events import Event
from server.live.dispatch import channel
from server.settings import Settings
from server.store import Store
from server.web.app import create_app
from tests.conftest import Customer, Stack, accept, serve

TIMEOUT = 10.0  # under the 15 s heartbeat: live events must come from the hub


def ws_url(base_url: str, account: str, since: int | None = None, **extra: str) -> str:
    query = httpx.QueryParams({"account": account, **extra})
    if since is not None:
        query = query.set("since", str(since))
    return f"ws{base_url.removeprefix('http')}/ws?{query}"


@contextlib.asynccontextmanager
async def subscribe(
    base_url: str, who: Customer, since: int | None = None, account: str | None = None, **kw: Any
) -> AsyncIterator[ClientConnection]:
    url = ws_url(base_url, account or who.account, since)
    async with connect(url, additional_headers=who.headers, **kw) as ws:
        yield ws


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
    """The next message that is not a heartbeat."""

    async def next_message() -> dict[str, Any]:
        while True:
            message: dict[str, Any] = orjson.loads(await ws.recv())
            if message["type"] != "ping":
                return message

    return await asyncio.wait_for(next_message(), timeout)


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the socket; its close code."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws.close_code


@contextlib.asynccontextmanager
async def server_stack(
    settings: Settings, store: Store, own_store: bool = False, **overrides: Any
) -> AsyncIterator[Stack]:
    """Another web server on the same database and Redis, with changed settings
    (``own_store``: it opens its own database connections, as a second process would)."""
    changed = dataclasses.replace(settings, **overrides)
    app = create_app(changed, store=None if own_store else store)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield Stack(changed, store, url, client)


Publish = Callable[[Sequence[Event]], Awaitable[None]]


@contextlib.asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[Publish]:
    """Publish chosen events on Redis exactly as the dispatcher does after a commit."""
    client = Redis.from_url(settings.redis_url or "")

    async def publish(events: Sequence[Event]) -> None:
        for event in events:
            await client.publish(channel(settings, event.account_id), event.payload)

    try:
        yield publish
    finally:
        await client.aclose()


async def seq_of(stack: Stack, who: Customer) -> int:
    return int((await stack.account(who))["seq"])


async def test_sender_and_recipient_see_pending_then_completed_with_current_balances(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    a_seq, b_seq = await seq_of(stack, alice), await seq_of(stack, bob)
    async with (
        subscribe(stack.base_url, alice, a_seq) as a_ws,
        subscribe(stack.base_url, bob, b_seq) as b_ws,
    ):
        tid = (await stack.transfer(alice, bob.account, "12.34")).json()["id"]
        for ws, who, seq in ((a_ws, alice, a_seq), (b_ws, bob, b_seq)):
            event = await recv(ws)
            assert (event["type"], event["account"], event["seq"]) == (
                "transfer.pending",
                who.account,
                seq + 1,
            )
            assert event["transfer"]["id"] == tid and event["transfer"]["status"] == "pending"
            assert event["balance"] == (await stack.account(who))["balance"]

        await stack.settle_all()
        for ws, who, seq in ((a_ws, alice, a_seq), (b_ws, bob, b_seq)):
            event = await recv(ws)
            assert (event["type"], event["seq"]) == ("transfer.completed", seq + 2)
            assert event["transfer"]["status"] == "completed"
            assert event["balance"] == (await stack.account(who))["balance"]
    assert (await stack.account(alice))["balance"]["available"] == "87.66"


async def test_resume_with_since_replays_exactly_the_missed_events_then_live_ones(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    last = await seq_of(stack, alice)
    async with subscribe(stack.base_url, alice, last) as ws:
        await stack.transfer(alice, bob.account, "1.00")
        last = (await recv(ws))["seq"]

    for i in range(5):
        await stack.transfer(alice, bob.account, f"{i + 1}.00")
    await stack.settle_all()
    missed = await seq_of(stack, alice) - last
    assert missed == 11  # 5 pending, then 6 completed (the first transfer's too)

    async with subscribe(stack.base_url, alice, last) as ws:
        replay = [await recv(ws) for _ in range(missed)]
        assert [e["seq"] for e in replay] == list(range(last + 1, last + 12))
        assert [e["type"] for e in replay[:5]] == ["transfer.pending"] * 5
        assert [e["type"] for e in replay[5:]] == ["transfer.completed"] * 6
        assert replay[-1]["balance"] == (await stack.account(alice))["balance"]

        tid = (await stack.transfer(alice, bob.account, "0.50")).json()["id"]
        live = await recv(ws)
        assert (live["seq"], live["transfer"]["id"]) == (last + 12, tid)
        await stack.settle_all()


async def test_too_long_a_replay_is_one_snapshot_then_live(
    settings: Settings, store: Store
) -> None:
    async with server_stack(settings, store, replay_cap=3) as stack:
        alice, bob = await stack.customer("100.00"), await stack.customer("0")
        for _ in range(3):
            await stack.transfer(alice, bob.account, "1.00")
        await stack.settle_all()
        async with subscribe(stack.base_url, alice, 0) as ws:
            snap = await recv(ws)
            state = await stack.account(alice)
            assert (snap["type"], snap["account"], snap["seq"]) == (
                "snapshot",
                alice.account,
                state["seq"],
            )
            assert snap["account_state"] == state and snap["balance"] == state["balance"]
            await stack.transfer(alice, bob.account, "1.00")
            assert (await recv(ws))["seq"] == state["seq"] + 1
        await stack.settle_all()


async def test_a_short_replay_is_sent_event_by_event_at_the_cap(
    settings: Settings, store: Store
) -> None:
    async with server_stack(settings, store, replay_cap=3) as stack:
        alice, bob = await stack.customer("100.00"), await stack.customer("0")
        await stack.transfer(alice, bob.account, "1.00")
        await stack.settle_all()
        async with subscribe(stack.base_url, alice, 0) as ws:
            assert [(await recv(ws))["seq"] for _ in range(3)] == [1, 2, 3]


async def test_unpublished_events_are_filled_from_the_log_and_duplicates_dropped(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    start = await seq_of(stack, alice)
    async with publisher(stack.settings) as publish, subscribe(stack.base_url, alice, start) as ws:
        # Two commits whose publishes are "lost", then one that is published twice.
        for _ in range(2):
            await accept(stack.store, alice.user_id, alice.account, bob.account, 100)
        third = await accept(stack.store, alice.user_id, alice.account, bob.account, 100)
        await publish(third.events)
        await publish(third.events)
        got = [await recv(ws) for _ in range(3)]
        assert [e["seq"] for e in got] == [start + 1, start + 2, start + 3]
        assert got[2]["transfer"]["id"] == third.transfer.id

        fourth = await accept(stack.store, alice.user_id, alice.account, bob.account, 100)
        await publish(fourth.events)
        assert (await recv(ws))["seq"] == start + 4, "the duplicate was sent again"


async def test_a_lost_last_publish_arrives_with_the_next_heartbeat(
    settings: Settings, store: Store
) -> None:
    async with server_stack(settings, store, ws_ping_s=0.2) as stack:
        alice, bob = await stack.customer("100.00"), await stack.customer("0")
        start = await seq_of(stack, alice)
        async with subscribe(stack.base_url, alice, start) as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"type": "ping"}
            await accept(store, alice.user_id, alice.account, bob.account, 100)
            assert (await recv(ws))["seq"] == start + 1


async def test_freezing_an_account_is_an_event_of_its_stream_live_and_on_resume(
    stack: Stack,
) -> None:
    """account.frozen and account.unfrozen take the account's next seq, carry its new
    state, reach a subscriber live, and are replayed like any event."""
    alice = await stack.customer("10.00")
    start = (await stack.account(alice))["seq"]
    async with subscribe(stack.base_url, alice, since=start) as ws:
        await stack.freeze(alice.account)
        frozen = await recv(ws)
        await stack.unfreeze(alice.account)
        unfrozen = await recv(ws)
    assert (frozen["type"], frozen["seq"]) == ("account.frozen", start + 1)
    assert frozen["account_state"]["status"] == "frozen" and "transfer" not in frozen
    assert frozen["balance"] == frozen["account_state"]["balance"]
    assert frozen["balance"]["available"] == "10.00"
    assert (unfrozen["type"], unfrozen["seq"]) == ("account.unfrozen", start + 2)
    assert unfrozen["account_state"]["status"] == "active"
    async with subscribe(stack.base_url, alice, since=start) as ws:
        assert [await recv(ws), await recv(ws)] == [frozen, unfrozen], "replayed as sent"
