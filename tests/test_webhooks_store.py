"""Webhooks in the database: an endpoint's cursors turn its owner's new events into
deliveries once each, in order; owners only; attempts, retries and disabling."""

from __future__ import annotations

import pytest

from server.domain import webhooks as rules
from server.domain.clock import now_us
from server.domain.webhooks import DeliveryStatus, EndpointStatus, Outcome
from server.store import Store
from server.store import webhooks as hooks
from tests.conftest import Stack, accept


async def _endpoint(store: Store, user_id: str, events: tuple[str, ...] = ("*",)) -> str:
    found = await store.transaction(
        lambda conn: hooks.create(
            conn, user_id, "https://example.com/in", "", events, rules.new_secret(), now_us(), 10
        )
    )
    return found.id


async def test_events_after_creation_become_deliveries_once_in_seq_order(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    endpoint_id = await _endpoint(stack.store, alice.user_id)
    assert await hooks.behind(stack.store, now_us()) == []
    for _ in range(3):
        await accept(stack.store, alice.user_id, alice.account, bob.account, 100)
    assert await hooks.behind(stack.store, now_us()) == [endpoint_id]
    read = await stack.store.transaction(lambda conn: hooks.fill(conn, endpoint_id, now_us()))
    again = await stack.store.transaction(lambda conn: hooks.fill(conn, endpoint_id, now_us()))
    assert (read, again) == (3, 0)
    pending = await hooks.pending(stack.store, endpoint_id)
    seqs = [int(d.payload.split('"seq":')[1].split(",")[0]) for d in pending]
    assert [d.type for d in pending] == ["transfer.pending"] * 3
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    await stack.settle_all()


async def test_a_filter_skips_events_but_moves_the_cursor(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    endpoint_id = await _endpoint(stack.store, alice.user_id, ("account.*",))
    await accept(stack.store, alice.user_id, alice.account, bob.account, 100)
    assert await stack.store.transaction(lambda conn: hooks.fill(conn, endpoint_id, now_us())) == 1
    assert await hooks.pending(stack.store, endpoint_id) == []
    assert await hooks.behind(stack.store, now_us()) == []
    await stack.settle_all()


async def test_failures_are_retried_then_the_endpoint_disabled(stack: Stack) -> None:
    alice = await stack.customer("10.00")
    endpoint_id = await _endpoint(stack.store, alice.user_id)
    at = now_us()
    await stack.store.transaction(
        lambda conn: hooks.add_test(conn, alice.user_id, endpoint_id, at, "x")
    )
    (delivery,) = await hooks.pending(stack.store, endpoint_id)
    failed = Outcome(500, "", 1000)
    hour = 3_600_000_000
    first = await stack.store.transaction(
        lambda conn: hooks.record(conn, delivery, failed, at, at + 5, 2 * hour)
    )
    later = await stack.store.transaction(
        lambda conn: hooks.record(conn, delivery, failed, at + 3 * hour, None, 2 * hour)
    )
    assert first is None and later is not None and "HTTP 500" in later
    found = await hooks.owned(stack.store, alice.user_id, endpoint_id)
    assert found.status is EndpointStatus.DISABLED and found.disabled_reason == later
    (logged,) = await hooks.deliveries(stack.store, alice.user_id, endpoint_id, 10, None)
    assert logged.status is DeliveryStatus.FAILED and len(logged.tries) == 2
    assert logged.tries[0].next_attempt_at == at + 5


async def test_others_endpoints_are_not_found(stack: Stack) -> None:
    alice, eve = await stack.customer("1.00"), await stack.customer("1.00")
    endpoint_id = await _endpoint(stack.store, alice.user_id)
    with pytest.raises(rules.WebhookNotFound):
        await hooks.owned(stack.store, eve.user_id, endpoint_id)
    with pytest.raises(rules.WebhookNotFound):
        await stack.store.transaction(lambda conn: hooks.delete(conn, eve.user_id, endpoint_id))
    await stack.store.transaction(lambda conn: hooks.delete(conn, alice.user_id, endpoint_id))
    assert await hooks.endpoints_of(stack.store, alice.user_id) == []
