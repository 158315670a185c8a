"""Concurrent acceptance never over-reserves; identical requests create one transfer."""

from __future__ import annotations

import asyncio
import collections

from server.store.audit import audit
from tests.conftest import Stack


async def test_concurrent_transfers_never_overdraw_and_all_settle(stack: Stack) -> None:
    # 5 senders with 100.00 each fire 40 transfers of 5.00 (200.00) at 5 recipients, all
    # at once: exactly 20 per sender fit. Recipients never send, so the count is exact.
    senders = [await stack.customer("100.00") for _ in range(5)]
    recipients = [await stack.customer("0") for _ in range(5)]
    calls = [
        stack.transfer(s, recipients[(i + j) % 5].account, "5.00")
        for i, s in enumerate(senders)
        for j in range(40)
    ]
    responses = await asyncio.gather(*calls)
    outcomes = collections.Counter(
        r.status_code if r.status_code == 202 else r.json()["error"]["code"] for r in responses
    )
    assert outcomes == {202: 100, "insufficient_funds": 100}

    for s in senders:
        bal = (await stack.account(s))["balance"]
        assert bal["available"] == "0.00" and bal["pending_debits"] == "100.00"

    await stack.settle_all()

    statuses = await stack.store.fetch_all(
        "SELECT status, COUNT(*) AS n FROM transfers WHERE memo = '' GROUP BY status"
    )
    assert {r["status"]: r["n"] for r in statuses} == {"completed": 100}
    total = 0
    for c in recipients:
        bal = (await stack.account(c))["balance"]
        assert bal["pending_credits"] == "0.00"
        total += int(bal["posted"].replace(".", ""))
    assert total == 500_00
    assert (await audit(stack.store)).ok


async def test_identical_requests_racing_with_one_key_make_one_transfer(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    responses = await asyncio.gather(
        *[stack.transfer(alice, bob.account, "7.00", key="pay-bob-once") for _ in range(20)]
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.content for r in responses}) == 1, "replays return the original response"
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count("true") == 19 and replayed.count(None) == 1
    assert (await stack.account(alice))["balance"]["available"] == "93.00"
    await stack.settle_all()


async def test_reusing_a_key_for_different_parameters_is_refused(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    first = await stack.transfer(alice, bob.account, "7.00", key="k")
    again = await stack.transfer(alice, bob.account, "7.00", key="k")
    other = await stack.transfer(alice, bob.account, "8.00", key="k")
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert (await stack.account(alice))["balance"]["available"] == "93.00"
    await stack.settle_all()


async def test_idempotency_keys_are_per_user(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("100.00")
    a = await stack.transfer(alice, bob.account, "1.00", key="same")
    b = await stack.transfer(bob, alice.account, "1.00", key="same")
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]
    assert "Idempotent-Replayed" not in b.headers
    await stack.settle_all()


async def test_cancels_racing_settlement_each_take_effect_once(stack: Stack) -> None:
    # 40 pending transfers; cancel each while a worker settles them all at once. Every
    # transfer ends either cancelled (the cancel answered 200) or completed (409), and the
    # money moved once: released, or posted, never both (the store fixture audits too).
    alice, bob = await stack.customer("40.00"), await stack.customer("0")
    ids = [(await stack.transfer(alice, bob.account, "1.00")).json()["id"] for _ in range(40)]
    cancels = [
        stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers) for tid in ids
    ]
    settling = asyncio.create_task(stack.settle_all())
    answers = await asyncio.gather(*cancels)
    await settling
    cancelled = {tid for tid, r in zip(ids, answers, strict=True) if r.status_code == 200}
    assert all(r.status_code in (200, 409) for r in answers)
    for tid in ids:
        want = "cancelled" if tid in cancelled else "completed"
        assert await stack.status_of(alice, tid) == want
    balance = (await stack.account(alice))["balance"]
    assert balance["posted"] == f"{len(cancelled)}.00"
    assert balance["pending_debits"] == "0.00"
    assert (await stack.account(bob))["balance"]["posted"] == f"{40 - len(cancelled)}.00"
