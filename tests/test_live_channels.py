"""Each web process subscribes on Redis to the channels of the accounts it has sockets
for, and only those (server/live/hub.py): real uvicorn servers, real Redis, real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from server.live.dispatch import channel
from server.live.hub import Hub, Subscription
from server.live.inbox import RESYNC, Outgoing
from server.settings import Settings
from server.store import Store
from tests.conftest import Stack
from tests.test_live import recv, seq_of, server_stack, subscribe

EVENT = b'{"type":"transfer.pending","account":"acc_a","seq":1,"transfer":{},"balance":{}}'


async def numsub(settings: Settings, *accounts: str) -> list[int]:
    """How many connections Redis sends each account's events to."""
    client = Redis.from_url(settings.redis_url or "")
    try:
        reply = await client.pubsub_numsub(*(channel(settings, a) for a in accounts))
        return [int(n) for _, n in reply]
    finally:
        await client.aclose()


async def hub_clients(settings: Settings) -> list[dict[str, Any]]:
    """The hubs' pub/sub connections (CLIENT LIST), by their name."""
    client = Redis.from_url(settings.redis_url or "")
    try:
        clients: list[dict[str, Any]] = await client.client_list()
    finally:
        await client.aclose()
    return [c for c in clients if c["name"].startswith(f"{settings.redis_prefix}:hub:")]


async def queued(sub: Subscription, within: float = 30) -> list[Outgoing]:
    """What the hub queues for ``sub`` next, awaited as a socket's sender is told of it
    (``Inbox.notify``)."""
    arrived = asyncio.Event()
    sub.queue.notify = arrived.set
    try:
        async with asyncio.timeout(within):
            while not (items := sub.queue.take()):
                arrived.clear()
                await arrived.wait()
    finally:
        sub.queue.notify = None
    return items


async def test_a_process_subscribes_to_the_accounts_of_its_sockets_only(
    stack: Stack, store: Store
) -> None:
    async with server_stack(stack.settings, store, own_store=True) as other:
        alice, bob = await stack.customer("100.00"), await stack.customer("0")
        nobody = await stack.customer("0")
        await stack.transfer(alice, bob.account, "1.00")
        a_seq, b_seq = await seq_of(stack, alice), await seq_of(stack, bob)
        # Each socket replays its last event, which a socket reads only once its
        # account's channel is confirmed: receiving it means Redis has the subscription.
        async with (
            subscribe(stack.base_url, alice, a_seq - 1) as on_one,
            subscribe(other.base_url, bob, b_seq - 1) as on_other,
        ):
            assert (await recv(on_one))["seq"] == a_seq
            assert (await recv(on_other))["seq"] == b_seq
            accounts = (alice.account, bob.account, nobody.account)
            assert await numsub(stack.settings, *accounts) == [1, 1, 0]
            # Two hubs, each on its own account's channel (and the ended-credentials
            # channel); no pattern subscription sends them everyone's events.
            hubs = await hub_clients(stack.settings)
            assert [(int(c["sub"]), int(c["psub"])) for c in hubs] == [(2, 0), (2, 0)]
            # And the events still flow live, to each side's own process.
            tid = (await stack.transfer(alice, bob.account, "2.00")).json()["id"]
            for ws in (on_one, on_other):
                live = await recv(ws)
                assert (live["type"], live["transfer"]["id"]) == ("transfer.pending", tid)
    await stack.settle_all()


async def test_the_last_subscription_of_an_account_unsubscribes_its_channel(
    settings: Settings, store: Store
) -> None:
    hub = Hub(settings, store)
    await hub.start()
    try:
        first, second = hub.subscribe("acc_a", "alice", 0), hub.subscribe("acc_a", "alice", 0)
        hub.subscribe("acc_b", "bob", 0)
        await hub.sync()
        assert await numsub(settings, "acc_a", "acc_b") == [1, 1]
        hub.unsubscribe(first)
        await hub.sync()
        assert await numsub(settings, "acc_a", "acc_b") == [1, 1]
        hub.unsubscribe(second)
        await hub.sync()
        assert await numsub(settings, "acc_a", "acc_b") == [0, 1]
        assert hub.channels == {"acc_b"}
        # Back again: a new first subscription subscribes the channel again.
        again = hub.subscribe("acc_a", "alice", 0)
        await asyncio.wait_for(again.subscribed.wait(), 30)
        assert await numsub(settings, "acc_a", "acc_b") == [1, 1]
    finally:
        await hub.stop()


async def test_after_a_lost_connection_every_channel_is_subscribed_again_then_resynced(
    settings: Settings, store: Store
) -> None:
    hub = Hub(settings, store)
    await hub.start()
    try:
        subs = [hub.subscribe("acc_a", "alice", 0), hub.subscribe("acc_b", "bob", 0)]
        await hub.sync()
        [before] = await hub_clients(settings)
        client = Redis.from_url(settings.redis_url or "")
        try:
            await client.client_kill_filter(_id=before["id"])
        finally:
            await client.aclose()
        # A subscription is told to resync from the log once its channel is confirmed
        # on the new connection, so nothing published meanwhile is missed.
        for sub in subs:
            assert (await queued(sub))[0] is RESYNC
        await hub.sync()
        [after] = await hub_clients(settings)
        assert after["id"] != before["id"] and int(after["sub"]) == 3
        assert await numsub(settings, "acc_a", "acc_b") == [1, 1]
        # Live again.
        publisher = Redis.from_url(settings.redis_url or "")
        try:
            assert await publisher.publish(channel(settings, "acc_a"), EVENT) == 1
        finally:
            await publisher.aclose()
        assert (await queued(subs[0]))[0].seq == 1
    finally:
        await hub.stop()
