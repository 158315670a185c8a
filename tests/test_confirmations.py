"""Large transfers awaiting their sender's passkey, through the real HTTP API: the hold,
what only the sender sees, settlement passing them by, cancel, the unconfirmed ones
cancelled by the sweeper, and the ledger's invariants after each change."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from jobs.worker import shutdown, startup, sweep
from server.domain.clock import now_us
from server.settings import Settings
from server.store import Store
from server.store import passkeys as keys
from server.store.audit import audit
from server.web.app import create_app
from tests.conftest import Customer, Stack, account_events, execute, next_event, serve
from tests.test_worker import _redis


async def give_passkey(store: Store, who: Customer, credential_id: str = "") -> None:
    """A passkey on file for ``who`` (its key never used here: no ceremony needed)."""
    key = keys.Passkey(
        id=credential_id or f"cred-{who.user_id}",
        user_id=who.user_id,
        name="test key",
        public_key="AA",
        sign_count=0,
        created_at=now_us(),
        last_used_at=None,
    )
    await store.transaction(lambda conn: keys.add(conn, key))


async def audited(store: Store) -> None:
    report = await audit(store)
    assert report.ok, report.render()


async def get(stack: Stack, who: Customer, path: str) -> Any:
    return await stack.client.get(path, headers=who.headers)


async def run_sweep(stack: Stack) -> None:
    redis = await _redis(stack)
    ctx = {"settings": stack.settings, "store": stack.store, "redis": redis}
    await startup(ctx)
    try:
        await sweep(ctx)
    finally:
        await shutdown(ctx)
        await redis.aclose()


async def test_a_large_transfer_awaits_its_senders_passkey_held_and_seen_by_the_sender_only(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    async with account_events(stack.settings, alice.account) as mine:
        r = await stack.transfer(alice, bob.account, "1500.00")
        assert r.status_code == 202, r.text
        body = r.json()
        tid = body["id"]
        event = await next_event(mine, "transfer.awaiting_confirmation", tid)
    assert body["status"] == "awaiting_confirmation"
    assert body["next_action"] == {
        "type": "confirm_with_passkey",
        "url": f"/transfers/{tid}/confirm",
    }
    assert body["balance"]["pending_debits"] == "1500.00"
    assert body["balance"]["available"] == "3500.00"
    assert event["balance"]["available"] == "3500.00"
    seen = (await get(stack, alice, f"/api/transfers/{tid}")).json()
    assert seen["status"] == "awaiting_confirmation" and seen["next_action"] == body["next_action"]
    assert (await stack.account(bob))["balance"]["pending_credits"] == "0.00"
    assert (await stack.account(bob))["seq"] == 0, "nothing in the recipient's log"
    assert (await get(stack, bob, f"/api/transfers/{tid}")).status_code == 404
    theirs = (await get(stack, bob, f"/api/accounts/{bob.account}/transfers")).json()
    assert tid not in [t["id"] for t in theirs["transfers"]]
    ours = (await get(stack, alice, f"/api/accounts/{alice.account}/transfers")).json()
    assert ours["transfers"][0]["id"] == tid
    await audited(stack.store)

    await stack.settle_all()
    assert await stack.status_of(alice, tid) == "awaiting_confirmation", "settlement passes it by"
    await audited(stack.store)


@pytest.mark.parametrize("amount", ["1000.00", "999.99", "0.01"])
async def test_up_to_the_threshold_a_transfer_is_pending_at_once(stack: Stack, amount: str) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    body = (await stack.transfer(alice, bob.account, amount)).json()
    assert body["status"] == "pending" and "next_action" not in body
    assert (await stack.account(bob))["balance"]["pending_credits"] == amount
    await stack.settle_all()
    assert await stack.status_of(alice, body["id"]) == "completed"
    await audited(stack.store)


async def test_above_the_threshold_without_a_passkey_is_refused_with_where_to_add_one(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    r = await stack.transfer(alice, bob.account, "1000.01")
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "passkey_required" and error["url"] == "/security"
    assert (await stack.account(alice))["balance"]["pending_debits"] == "0.00"
    await audited(stack.store)


async def test_a_preview_says_a_large_transfer_needs_the_passkey_as_sending_would(
    stack: Stack,
) -> None:
    """Preview answers what send would: above the threshold, refused without a passkey
    (403 ``passkey_required`` when sent), awaiting it with one; at the threshold, neither."""
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")

    async def preview(amount: str) -> Any:
        body = {"from_account": alice.account, "to_account": bob.account, "amount": amount}
        r = await stack.client.post("/api/transfers/preview", json=body, headers=alice.headers)
        assert r.status_code == 200, r.text
        return r.json()

    none_yet = await preview("1000.01")
    assert (
        none_yet["error"]["code"] == "passkey_required" and none_yet["error"]["url"] == "/security"
    )
    assert none_yet["requires_passkey"] is False
    assert none_yet["balance_after"]["available"] == "3999.99"
    assert (await preview("1000.00")) | {"balance_after": None} == {
        "balance_after": None,
        "error": None,
        "requires_passkey": False,
    }
    await give_passkey(stack.store, alice)
    with_one = await preview("1000.01")
    assert with_one["error"] is None and with_one["requires_passkey"] is True
    assert (await stack.transfer(alice, bob.account, "1000.01")).json()["status"] == (
        "awaiting_confirmation"
    )
    assert (await preview("1000.00"))["requires_passkey"] is False
    await audited(stack.store)


async def test_the_send_forms_preview_says_when_the_passkey_will_be_asked(stack: Stack) -> None:
    from tests.test_pages import KEY
    from tests.test_sessions import browser, csrf_of, login

    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        token = csrf_of(page)
        form = {"csrf_token": token, "idempotency_key": KEY.findall(page)[0], "to": bob.username}
        headers = {"HX-Request": "true", "X-CSRF-Token": token}
        url = f"/accounts/{alice.account}/preview"

        async def says(amount: str) -> str:
            r = await client.post(url, data={**form, "amount": amount}, headers=headers)
            assert r.status_code == 200, r.text
            return r.text

        refused = await says("1500.00")
        assert "confirmed with a passkey, and you have none yet" in refused
        assert 'class="preview bad"' in refused
        await give_passkey(stack.store, alice)
        asked = await says("1500.00")
        assert "After sending: $3,500.00 available. You will confirm it with your passkey." in asked
        small = await says("10.00")
        assert "After sending: $4,990.00 available" in small and "passkey" not in small


async def served(settings: Settings, store: Store, **changed: Any) -> Any:
    return serve(create_app(dataclasses.replace(settings, **changed), store=store), settings)


@pytest.mark.parametrize(("above", "status"), [(None, "pending"), (0, "awaiting_confirmation")])
async def test_the_threshold_can_be_off_or_zero(
    stack: Stack, above: int | None, status: str
) -> None:
    import httpx

    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    async with (
        await served(stack.settings, stack.store, confirm_above=above) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body = {"from_account": alice.account, "to_account": bob.account, "amount": "2000.00"}
        r = await client.post("/api/transfers", json=body, headers=alice.headers)
        assert r.status_code == 202 and r.json()["status"] == status
        body["amount"] = "0.01"
        r = await client.post("/api/transfers", json=body, headers=alice.headers)
        assert r.json()["status"] == ("pending" if above is None else status)
    await audited(stack.store)


async def test_the_sender_cancels_an_awaiting_transfer_and_only_they_are_told(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    tid = (await stack.transfer(alice, bob.account, "1500.00")).json()["id"]
    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=bob.headers)
    assert r.status_code == 404
    async with account_events(stack.settings, alice.account) as mine:
        r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled" and r.json()["failure_reason"] is None
        assert "next_action" not in r.json()
        event = await next_event(mine, "transfer.cancelled", tid)
    assert event["balance"]["available"] == "5000.00"
    assert (await stack.account(bob))["seq"] == 0, "the recipient never heard of it"
    assert (await get(stack, bob, f"/api/transfers/{tid}")).status_code == 404
    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_pending"
    await audited(stack.store)


async def test_unconfirmed_in_time_it_is_cancelled_not_confirmed_and_released(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    r = (await stack.transfer(alice, bob.account, "1500.00")).json()
    tid = r["id"]
    created, expires = r["created_at"], r["expires_at"]
    from server.domain import wire

    ttl_s = (wire.micros(expires) - wire.micros(created)) / 1_000_000
    assert ttl_s == stack.settings.confirm_ttl_s == 300
    await execute(stack.store, f"UPDATE transfers SET expires_at = 1 WHERE id = '{tid}'")
    async with account_events(stack.settings, alice.account) as mine:
        await run_sweep(stack)
        event = await next_event(mine, "transfer.cancelled", tid)
    assert event["transfer"]["failure_reason"] == "not_confirmed"
    t = (await get(stack, alice, f"/api/transfers/{tid}")).json()
    assert (t["status"], t["failure_reason"]) == ("cancelled", "not_confirmed")
    a = await stack.account(alice)
    assert a["balance"]["available"] == a["balance"]["posted"] == "5000.00"
    assert (await stack.account(bob))["seq"] == 0
    assert (await get(stack, bob, f"/api/transfers/{tid}")).status_code == 404
    await run_sweep(stack)  # again: nothing left to do
    assert (await stack.account(alice))["seq"] == a["seq"]
    await audited(stack.store)


async def test_an_awaiting_transfer_never_holds_back_its_senders_later_ones(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    big = (await stack.transfer(alice, bob.account, "1500.00")).json()["id"]
    small = (await stack.transfer(alice, bob.account, "10.00")).json()["id"]
    await stack.settle_all()
    assert await stack.status_of(alice, small) == "completed"
    assert await stack.status_of(alice, big) == "awaiting_confirmation"
    a = await stack.account(alice)
    assert (a["balance"]["posted"], a["balance"]["available"]) == ("4990.00", "3490.00")
    await audited(stack.store)


async def test_the_hold_of_an_awaiting_transfer_counts_against_what_can_be_sent(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("2000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    assert (await stack.transfer(alice, bob.account, "1500.00")).status_code == 202
    r = await stack.transfer(alice, bob.account, "600.00")
    assert r.status_code == 422 and r.json()["error"]["code"] == "insufficient_funds"
    await audited(stack.store)


async def test_the_audit_counts_an_awaiting_hold_and_finds_one_missing(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    await stack.transfer(alice, bob.account, "1500.00")
    await audited(stack.store)
    await execute(
        stack.store, f"UPDATE accounts SET pending_debits = 0 WHERE id = '{alice.account}'"
    )
    report = await audit(stack.store)
    assert report.violations[3] and alice.account in report.violations[3][0]
    await execute(
        stack.store, f"UPDATE accounts SET pending_debits = 150000 WHERE id = '{alice.account}'"
    )


async def test_statements_never_list_an_awaiting_transfer(stack: Stack) -> None:
    from tests.test_sessions import browser, login

    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    await give_passkey(stack.store, alice)
    tid = (await stack.transfer(alice, bob.account, "1500.00")).json()["id"]
    pending = (await stack.transfer(alice, bob.account, "5.00")).json()["id"]
    statement = await get(stack, alice, f"/api/accounts/{alice.account}/statement")
    assert tid not in statement.text
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}/statement")).text
    assert pending in page and tid not in page, "the pending one is listed, not the other"
    await audited(stack.store)
