"""Passkeys through the real HTTP API, with a Python authenticator: registering one, and
confirming an awaiting transfer with an assertion bound to exactly that transfer
(dynamic linking): another transfer's, a changed amount or payee, a replay or one
without user verification are refused and change nothing."""

from __future__ import annotations

from typing import Any

import msgspec

from server.domain.model import Transfer
from server.domain.passkeys import challenge
from server.store import Store
from server.store.audit import audit
from tests.authenticator import UP, Authenticator
from tests.conftest import Customer, Stack, account_events, next_event


async def audited(store: Store) -> None:
    report = await audit(store)
    assert report.ok, report.render()


async def register(stack: Stack, who: Customer, name: str = "Phone") -> Authenticator:
    r = await stack.client.post("/api/passkeys/options", headers=who.headers)
    assert r.status_code == 200, r.text
    options = r.json()["publicKey"]
    assert options["rp"]["id"] == "localhost"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    device = Authenticator()
    body = {"name": name, "credential": device.create(options["challenge"])}
    r = await stack.client.post(
        "/api/passkeys", json={**body, "password": "not-it"}, headers=who.headers
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"
    body["password"] = "pw-" + who.username
    r = await stack.client.post("/api/passkeys", json=body, headers=who.headers)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == device.id and r.json()["name"] == name
    return device


async def options_for(stack: Stack, who: Customer, tid: str) -> dict[str, Any]:
    r = await stack.client.get(f"/api/transfers/{tid}/confirmation", headers=who.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def post_assertion(stack: Stack, who: Customer, tid: str, assertion: Any) -> Any:
    return await stack.client.post(
        f"/api/transfers/{tid}/confirmation", json=assertion, headers=who.headers
    )


async def awaiting(stack: Stack, who: Customer, to: Customer, amount: str = "1500.00") -> str:
    r = await stack.transfer(who, to.account, amount)
    assert r.status_code == 202 and r.json()["status"] == "awaiting_confirmation", r.text
    return str(r.json()["id"])


async def test_a_passkey_is_registered_listed_and_its_challenge_used_once(stack: Stack) -> None:
    alice = await stack.customer("0")
    device = await register(stack, alice)
    listed = (await stack.client.get("/api/passkeys", headers=alice.headers)).json()
    assert [(k["id"], k["name"]) for k in listed["passkeys"]] == [(device.id, "Phone")]
    r = await stack.client.post("/api/passkeys/options", headers=alice.headers)
    options = r.json()["publicKey"]
    assert [c["id"] for c in options["excludeCredentials"]] == [device.id]
    again = Authenticator()
    body = {
        "name": "Laptop",
        "credential": again.create(options["challenge"]),
        "password": "pw-" + alice.username,
    }
    assert (
        await stack.client.post("/api/passkeys", json=body, headers=alice.headers)
    ).status_code == 201
    r = await stack.client.post("/api/passkeys", json=body, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "passkey_invalid"


async def test_a_passkey_registered_for_another_origin_is_refused(stack: Stack) -> None:
    alice = await stack.customer("0")
    r = await stack.client.post("/api/passkeys/options", headers=alice.headers)
    device = Authenticator(origin="http://evil.example")
    body = {
        "name": "x",
        "credential": device.create(r.json()["publicKey"]["challenge"]),
        "password": "pw-" + alice.username,
    }
    r = await stack.client.post("/api/passkeys", json=body, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "passkey_invalid"
    assert (await stack.client.get("/api/passkeys", headers=alice.headers)).json() == {
        "passkeys": []
    }


async def test_an_assertion_for_the_transfer_confirms_it_then_it_settles(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    device = await register(stack, alice)
    tid = await awaiting(stack, alice, bob)
    options = await options_for(stack, alice, tid)
    assert options["transfer"]["id"] == tid and options["transfer"]["amount"] == "1500.00"
    public_key = options["publicKey"]
    assert public_key["rpId"] == "localhost" and public_key["userVerification"] == "required"
    assert [c["id"] for c in public_key["allowCredentials"]] == [device.id]
    async with (
        account_events(stack.settings, alice.account) as mine,
        account_events(stack.settings, bob.account) as theirs,
    ):
        r = await post_assertion(stack, alice, tid, device.get(public_key["challenge"]))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "pending" and "next_action" not in r.json()
        for pubsub in (mine, theirs):
            await next_event(pubsub, "transfer.pending", tid)
    assert (await stack.account(bob))["balance"]["pending_credits"] == "1500.00"
    assert (await stack.client.get(f"/api/transfers/{tid}", headers=bob.headers)).status_code == 200
    await audited(stack.store)
    await stack.settle_all()
    assert await stack.status_of(bob, tid) == "completed"
    assert (await stack.account(bob))["balance"]["posted"] == "1500.00"
    await audited(stack.store)


async def test_an_assertion_for_transfer_a_posted_to_b_is_refused_and_b_is_unchanged(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    device = await register(stack, alice)
    a, b = await awaiting(stack, alice, bob), await awaiting(stack, alice, bob)
    for_a = device.get((await options_for(stack, alice, a))["publicKey"]["challenge"])
    before = await options_for(stack, alice, b)
    r = await post_assertion(stack, alice, b, for_a)
    assert r.status_code == 422 and r.json()["error"]["code"] == "confirmation_invalid"
    assert await stack.status_of(alice, b) == "awaiting_confirmation"
    assert await options_for(stack, alice, b) == before, "B's challenge is the same"
    assert (await stack.account(bob))["balance"]["pending_credits"] == "0.00"
    assert (await post_assertion(stack, alice, a, for_a)).status_code == 200
    await audited(stack.store)


async def test_a_replayed_assertion_is_refused(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    device = await register(stack, alice)
    tid = await awaiting(stack, alice, bob)
    assertion = device.get((await options_for(stack, alice, tid))["publicKey"]["challenge"])
    assert (await post_assertion(stack, alice, tid, assertion)).status_code == 200
    seq = (await stack.account(alice))["seq"]
    r = await post_assertion(stack, alice, tid, assertion)
    assert r.status_code == 422 and r.json()["error"]["code"] == "confirmation_invalid"
    assert (await stack.account(alice))["seq"] == seq
    await audited(stack.store)


async def test_an_assertion_without_user_verification_is_refused(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    device = await register(stack, alice)
    tid = await awaiting(stack, alice, bob)
    challenge_text = (await options_for(stack, alice, tid))["publicKey"]["challenge"]
    r = await post_assertion(stack, alice, tid, device.get(challenge_text, flags=UP))
    assert r.status_code == 422 and r.json()["error"]["code"] == "confirmation_invalid"
    assert await stack.status_of(alice, tid) == "awaiting_confirmation"
    assert (await post_assertion(stack, alice, tid, device.get(challenge_text))).status_code == 200
    await audited(stack.store)


async def test_an_assertion_over_a_changed_amount_or_payee_is_refused(stack: Stack) -> None:
    alice, bob, carol = (
        await stack.customer("5000.00"),
        await stack.customer("0"),
        await stack.customer("0"),
    )
    device = await register(stack, alice)
    tid = await awaiting(stack, alice, bob)
    nonce = await stack.store.fetch_val(f"SELECT confirm_nonce FROM transfers WHERE id = '{tid}'")
    shown = (await options_for(stack, alice, tid))["transfer"]
    from server.domain import wire

    real = wire.transfer_from(msgspec.convert(shown, wire.TransferJSON))
    assert device.get(challenge(real, nonce))["response"] is not None
    for changed in (
        msgspec.structs.replace(real, amount=real.amount - 1),
        msgspec.structs.replace(real, to_account=carol.account),
    ):
        assert isinstance(changed, Transfer)
        r = await post_assertion(stack, alice, tid, device.get(challenge(changed, nonce)))
        assert r.status_code == 422 and r.json()["error"]["code"] == "confirmation_invalid"
    assert await stack.status_of(alice, tid) == "awaiting_confirmation"
    r = await post_assertion(stack, alice, tid, device.get(challenge(real, nonce)))
    assert r.status_code == 200, "the very same derivation confirms it"
    await audited(stack.store)


async def test_only_the_sender_sees_or_confirms_it(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    device = await register(stack, alice)
    bobs = await register(stack, bob)
    tid = await awaiting(stack, alice, bob)
    r = await stack.client.get(f"/api/transfers/{tid}/confirmation", headers=bob.headers)
    assert r.status_code == 404
    challenge_text = (await options_for(stack, alice, tid))["publicKey"]["challenge"]
    r = await post_assertion(stack, bob, tid, bobs.get(challenge_text))
    assert r.status_code == 404
    r = await post_assertion(stack, alice, tid, bobs.get(challenge_text))
    assert r.status_code == 422, "someone else's passkey does not confirm it"
    assert (await post_assertion(stack, alice, tid, device.get(challenge_text))).status_code == 200
    r = await stack.client.get(f"/api/transfers/{tid}/confirmation", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_pending"
    await audited(stack.store)


async def test_broken_assertions_and_registrations_are_refused_never_a_500(stack: Stack) -> None:
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    device = await register(stack, alice)
    tid = await awaiting(stack, alice, bob)
    good = device.get((await options_for(stack, alice, tid))["publicKey"]["challenge"])
    broken: list[Any] = [
        {**good, "response": {}},
        {**good, "response": {**good["response"], "clientDataJSON": "!!!"}},
        {**good, "response": {**good["response"], "authenticatorData": "AAAA"}},
        {**good, "response": {**good["response"], "signature": ""}},
        {**good, "id": "bm9wZQ", "rawId": "bm9wZQ"},
        {**good, "type": "nope"},
    ]
    for assertion in broken:
        r = await post_assertion(stack, alice, tid, assertion)
        assert r.status_code == 422, (assertion, r.text)
    assert await stack.status_of(alice, tid) == "awaiting_confirmation"
    body = {
        "name": "x",
        "credential": {"id": "x", "response": {}},
        "password": "pw-" + alice.username,
    }
    r = await stack.client.post("/api/passkeys", json=body, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "passkey_invalid"
    assert (await post_assertion(stack, alice, tid, good)).status_code == 200
    await audited(stack.store)
