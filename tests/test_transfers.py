"""The transfer lifecycle through the real HTTP API, settled by a real arq worker."""

from __future__ import annotations

import httpx
import pytest

from jobs.worker import shutdown, startup, sweep
from tests.conftest import Customer, Stack, account_events, execute, next_event
from tests.test_sessions import browser, login
from tests.test_worker import _redis


async def test_accepted_transfer_is_pending_at_once_then_completed_by_the_worker(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    r = await stack.transfer(alice, bob.account, "12.34", memo="lunch")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending" and body["amount"] == "12.34" and body["memo"] == "lunch"
    assert body["balance"] == {
        "posted": "100.00",
        "pending_debits": "12.34",
        "pending_credits": "0.00",
        "available": "87.66",
        "projected": "87.66",
    }
    assert await stack.status_of(alice, body["id"]) == "pending"
    assert (await stack.account(bob))["balance"]["pending_credits"] == "12.34"

    await stack.settle_all()

    done = (await stack.client.get(f"/api/transfers/{body['id']}", headers=bob.headers)).json()
    assert done["status"] == "completed" and done["settled_at"] is not None
    assert done["settled_in_ms"] >= 0
    a, b = await stack.account(alice), await stack.account(bob)
    assert a["balance"]["posted"] == a["balance"]["available"] == "87.66"
    assert b["balance"]["posted"] == b["balance"]["projected"] == "12.34"
    assert a["balance"]["pending_debits"] == b["balance"]["pending_credits"] == "0.00"


async def test_transfer_to_an_account_frozen_after_acceptance_fails_and_releases_funds(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    r = await stack.transfer(alice, bob.account, "20.00")
    await stack.freeze(bob.account)
    await stack.settle_all()
    t = (await stack.client.get(f"/api/transfers/{r.json()['id']}", headers=alice.headers)).json()
    assert (t["status"], t["failure_reason"]) == ("failed", "recipient_unavailable")
    a, b = await stack.account(alice), await stack.account(bob)
    assert a["balance"]["available"] == a["balance"]["posted"] == "50.00"
    assert b["balance"]["pending_credits"] == b["balance"]["posted"] == "0.00"


async def test_sender_cancels_a_pending_transfer_once(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "20.00")).json()["id"]

    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=bob.headers)
    assert r.status_code == 404, "only the sender may cancel"
    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_pending"

    await stack.settle_all()  # the queued job finds nothing to settle
    assert await stack.status_of(alice, tid) == "cancelled"
    assert (await stack.account(alice))["balance"]["available"] == "50.00"
    assert (await stack.account(bob))["balance"]["pending_credits"] == "0.00"


async def test_completed_transfer_cannot_be_cancelled(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "1.00")).json()["id"]
    await stack.settle_all()
    r = await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_pending"


async def test_history_is_newest_first_and_paginates(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    ids = [(await stack.transfer(alice, bob.account, f"{i}.00")).json()["id"] for i in (1, 2, 3)]
    url = f"/api/accounts/{alice.account}/transfers"
    page = (await stack.client.get(url, params={"limit": 2}, headers=alice.headers)).json()
    assert [t["id"] for t in page["transfers"]] == [ids[2], ids[1]]
    rest = (
        await stack.client.get(
            url, params={"limit": 2, "before": page["next_before"]}, headers=alice.headers
        )
    ).json()
    # The deposit that funded alice is her oldest transfer.
    assert rest["transfers"][0]["id"] == ids[0]
    assert rest["next_before"] is None
    await stack.settle_all()


async def test_events_log_every_change_with_balances(stack: Stack) -> None:
    alice, bob = await stack.customer("30.00"), await stack.customer("0")
    await stack.transfer(alice, bob.account, "10.00")
    await stack.settle_all()
    rows = await stack.store.fetch_all(
        "SELECT seq, type, payload FROM account_events "
        f"WHERE account_id = '{alice.account}' ORDER BY seq"
    )
    assert [(r["seq"], r["type"]) for r in rows] == [
        (1, "transfer.completed"),  # the deposit
        (2, "transfer.pending"),
        (3, "transfer.completed"),
    ]
    assert (await stack.account(alice))["seq"] == 3


# The use cases (server/usecases/transfers.py) apply one set of rules, whichever door a transfer
# comes through: the JSON API or the HTML form.

BAD_KEYS = ["k" * 300, "clé-1", "tab\tkey"]


async def _sent(stack: Stack, who: Customer) -> int:
    rows = await stack.store.fetch_all(
        f"SELECT id FROM transfers WHERE from_account = '{who.account}'"
    )
    return len(rows)


async def _form_post(stack: Stack, who: Customer, **fields: str) -> httpx.Response:
    async with browser(stack) as client:
        csrf = await login(client, who)
        form = {"csrf_token": csrf, "amount": "1.00", **fields}
        return await client.post(f"/accounts/{who.account}/transfers", data=form)


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_the_api_and_the_form_refuse_the_same_idempotency_keys(
    stack: Stack, key: str
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    r = await stack.client.post(
        "/api/transfers",
        json={"from_account": alice.account, "to_account": bob.account, "amount": "1.00"},
        headers=[
            (b"Authorization", f"Bearer {alice.token}".encode()),
            (b"Idempotency-Key", key.encode("latin-1")),
        ],
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "Idempotency-Key"
    r = await _form_post(stack, alice, to=bob.username, idempotency_key=key)
    assert r.status_code == 422 and "Idempotency-Key must be 1 to 255" in r.text
    assert await _sent(stack, alice) == 0, "nothing written"


async def test_a_form_key_with_nul_is_refused_on_every_database(stack: Stack) -> None:
    """PostgreSQL text cannot hold NUL: the form's key is checked, not stored as sent."""
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    r = await _form_post(stack, alice, to=bob.username, idempotency_key="nul\x00key")
    assert r.status_code == 422 and "Idempotency-Key must be 1 to 255" in r.text
    assert await _sent(stack, alice) == 0


@pytest.mark.parametrize(
    ("memo", "why"),
    [("m" * 501, "at most 500 characters"), ("nul\x00memo", "must not contain NUL")],
)
async def test_the_api_and_the_form_refuse_the_same_memos(
    stack: Stack, memo: str, why: str
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    r = await stack.transfer(alice, bob.account, "1.00", key="memo-1", memo=memo)
    assert r.status_code == 422 and r.json()["error"]["field"] == "memo", r.text
    r = await _form_post(stack, alice, to=bob.username, memo=memo, idempotency_key="memo-2")
    assert r.status_code == 422 and why in r.text
    assert await _sent(stack, alice) == 0, "nothing written"


async def test_a_form_key_is_kept_like_an_api_key(stack: Stack) -> None:
    """The form's stored key and memo are the validated ones: the API, sent the same key
    by the same user with the same transfer, replays the form's transfer."""
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    r = await _form_post(
        stack,
        alice,
        to=bob.account,
        memo="rent",
        idempotency_key="shared-1",
        confirm_recipient=bob.account,  # the first payment to bob: "Yes, send"
    )
    assert r.status_code == 303
    again = await stack.transfer(alice, bob.account, "1.00", key="shared-1", memo="rent")
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["memo"] == "rent"
    assert await _sent(stack, alice) == 1
    await stack.settle_all()


async def test_the_duplicate_guard_refuses_the_same_amount_to_the_same_account(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    first = (await stack.transfer(alice, bob.account, "4.30")).json()
    guarded = await stack.transfer(alice, bob.account, "4.30", guard_duplicates_s=120)
    assert guarded.status_code == 409, guarded.text
    error = guarded.json()["error"]
    assert error["code"] == "possible_duplicate" and error["duplicate_of"]["id"] == first["id"]
    assert error["duplicate_of"]["to_name"] == bob.username
    assert await _sent(stack, alice) == 1, "nothing sent"
    # Another amount, or the same without the guard, goes through.
    other = await stack.transfer(alice, bob.account, "4.31", guard_duplicates_s=120)
    assert other.status_code == 202
    again = await stack.transfer(alice, bob.account, "4.30")
    assert again.status_code == 202
    # A cancelled earlier one is no reason to refuse.
    carol = await stack.customer("0")
    tid = (await stack.transfer(alice, carol.account, "1.00")).json()["id"]
    assert (
        await stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
    ).status_code == 200
    retry = await stack.transfer(alice, carol.account, "1.00", guard_duplicates_s=120)
    assert retry.status_code == 202, retry.text
    await stack.settle_all()


@pytest.mark.parametrize("guard", [0, -1, 3601, "60", 1.5, True])
async def test_the_duplicate_guard_takes_whole_seconds_up_to_an_hour(
    stack: Stack, guard: object
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    r = await stack.transfer(alice, bob.account, "1.00", guard_duplicates_s=guard)
    assert r.status_code == 422 and r.json()["error"]["field"] == "guard_duplicates_s"


async def _preview(stack: Stack, who: Customer, to: str, amount: str) -> httpx.Response:
    body = {"from_account": who.account, "to_account": to, "amount": amount}
    return await stack.client.post("/api/transfers/preview", json=body, headers=who.headers)


async def test_a_preview_says_what_sending_would_leave_and_writes_nothing(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    accounts = "SELECT * FROM accounts ORDER BY id"
    before = [dict(r) for r in await stack.store.fetch_all(accounts)]
    r = await _preview(stack, alice, bob.account, "12.34")
    assert r.status_code == 200
    assert r.json() == {
        "balance_after": {
            "posted": "50.00",
            "pending_debits": "12.34",
            "pending_credits": "0.00",
            "available": "37.66",
            "projected": "37.66",
        },
        "error": None,
        "requires_passkey": False,
    }
    short = (await _preview(stack, alice, bob.account, "60.00")).json()
    assert short["error"]["code"] == "insufficient_funds" and "50.00" in short["error"]["message"]
    assert short["balance_after"]["available"] == "-10.00"
    nobody = (await _preview(stack, alice, "acc_nobody", "1.00")).json()
    assert nobody == {
        "balance_after": None,
        "error": {
            "code": "account_not_found",
            "message": "no such recipient account",
            "field": "to_account",
        },
        "requires_passkey": False,
    }
    bad = await _preview(stack, alice, bob.account, "1.234")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_amount"
    assert [dict(r) for r in await stack.store.fetch_all(accounts)] == before
    assert await _sent(stack, alice) == 0
    await stack.freeze(bob.account)
    frozen = (await _preview(stack, alice, bob.account, "1.00")).json()
    assert frozen["error"]["code"] == "recipient_unavailable"


async def test_a_transfer_pending_past_its_expiry_fails_and_releases_its_hold(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "20.00")).json()["id"]
    await execute(stack.store, f"UPDATE transfers SET expires_at = 1 WHERE id = '{tid}'")
    async with account_events(stack.settings, alice.account) as mine:
        async with account_events(stack.settings, bob.account) as theirs:
            redis = await _redis(stack)
            ctx = {"settings": stack.settings, "store": stack.store, "redis": redis}
            await startup(ctx)
            try:
                await sweep(ctx)
            finally:
                await shutdown(ctx)
                await redis.aclose()
            for pubsub in (mine, theirs):
                event = await next_event(pubsub, "transfer.failed", tid)
                assert event["transfer"]["failure_reason"] == "expired"
    a, b = await stack.account(alice), await stack.account(bob)
    assert a["balance"]["available"] == a["balance"]["posted"] == "50.00"
    assert b["balance"]["pending_credits"] == "0.00"
    await stack.settle_all()  # its job finds nothing left to settle
    assert await stack.status_of(alice, tid) == "failed"


async def test_settlement_refuses_a_transfer_past_its_expiry(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "20.00")).json()["id"]
    await execute(stack.store, f"UPDATE transfers SET expires_at = 1 WHERE id = '{tid}'")
    await stack.settle_all()
    t = (await stack.client.get(f"/api/transfers/{tid}", headers=bob.headers)).json()
    assert (t["status"], t["failure_reason"]) == ("failed", "expired")
    assert (await stack.account(bob))["balance"]["posted"] == "0.00"


async def test_a_preview_answers_what_the_same_send_would_duplicate_guard_included(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    first = await stack.transfer(alice, bob.account, "5.00")
    body = {
        "from_account": alice.account,
        "to_account": bob.account,
        "amount": "5.00",
        "guard_duplicates_s": 60,
    }
    preview = await stack.client.post("/api/transfers/preview", json=body, headers=alice.headers)
    send = await stack.client.post("/api/transfers", json=body, headers=alice.headers)
    assert send.status_code == 409 and send.json()["error"]["code"] == "possible_duplicate"
    said = preview.json()["error"]
    assert said is not None and said["code"] == "possible_duplicate"
    assert (
        said["duplicate_of"]["id"]
        == first.json()["id"]
        == send.json()["error"]["duplicate_of"]["id"]
    )
    other = await stack.client.post(
        "/api/transfers/preview", json={**body, "amount": "6.00"}, headers=alice.headers
    )
    assert other.json()["error"] is None, "another amount is no duplicate"
    await stack.settle_all()


@pytest.mark.parametrize("to", ["b\x00b", "x" * 10_000, "\u202ebob"])
async def test_the_forms_recipient_goes_through_the_text_rule(stack: Stack, to: str) -> None:
    """NUL, a 10,000-character name, a direction override: 422 on the field, and what was
    typed is never echoed into a 404 page."""
    alice = await stack.customer("10.00")
    r = await _form_post(stack, alice, to=to)
    assert r.status_code == 422, r.status_code
    assert "at most 64 characters" in r.text and to not in r.text
    assert await _sent(stack, alice) == 0


@pytest.mark.parametrize("memo", ["\u202egro.knab", "a\u2028b", "x\u2066y\u2069", "a\u2029"])
async def test_memos_refuse_direction_overrides_and_line_separators(
    stack: Stack, memo: str
) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    r = await stack.transfer(alice, bob.account, "1.00", memo=memo)
    assert r.status_code == 422 and r.json()["error"]["field"] == "memo"
    assert await _sent(stack, alice) == 0
