"""People, not handles: display names beside usernames (in the API, the stream and the
command line), and usernames in any letter case (server/domain/people.py)."""

from __future__ import annotations

import msgspec
import pytest
import sqlalchemy as sa

from server.domain import errors, people, wire
from server.store import accounts as admin
from server.store.schema import users
from server.usecases import accounts as account_cases
from server.web import passwords
from tests.conftest import Stack, account_events, next_event
from tests.test_cli import settle
from tests.test_pages import KEY
from tests.test_sessions import attempt, browser, csrf_of


@pytest.mark.parametrize(
    ("username", "display", "seen"),
    [
        ("bob", "Bob Martin", "Bob Martin (@bob)"),
        ("bob", "bob", "bob"),
        ("bob", "", "bob"),  # recorded before display names were kept
    ],
)
def test_people_are_called_by_their_name_with_their_username(
    username: str, display: str, seen: str
) -> None:
    assert people.called(username, display) == seen


def test_a_display_name_is_text_and_defaults_to_the_username() -> None:
    assert people.display_name("  Bob Martin ", "bob") == "Bob Martin"
    assert people.display_name(None, "bob") == people.display_name(" ", "bob") == "bob"
    with pytest.raises(errors.InvalidField):
        people.display_name("Bob\u202eMartin", "bob")
    with pytest.raises(errors.InvalidField):
        people.username("bob martin")


async def test_transfers_name_both_parties_in_the_api_and_the_stream(stack: Stack) -> None:
    alice = await stack.customer("100.00", display_name="Alice Chen")
    bob = await stack.customer("0", display_name="Bob Martin")
    async with account_events(stack.settings, bob.account) as events:
        r = await stack.transfer(alice, bob.account, "12.34")
        assert r.status_code == 202
        body = r.json()
        assert (body["from_display_name"], body["to_display_name"]) == ("Alice Chen", "Bob Martin")
        assert (body["from_name"], body["to_name"]) == (alice.username, bob.username)
        event = await next_event(events, "transfer.pending", body["id"])
    assert event["transfer"]["to_display_name"] == "Bob Martin"
    got = await stack.client.get(f"/api/transfers/{body['id']}", headers=bob.headers)
    assert got.json()["from_display_name"] == "Alice Chen"
    deposits = await stack.client.get(
        f"/api/accounts/{alice.account}/transfers", headers=alice.headers
    )
    deposit = deposits.json()["transfers"][-1]
    assert deposit["kind"] == "deposit" and deposit["from_display_name"] == "Funding USD"
    await stack.settle_all()


def test_what_was_recorded_without_display_names_encodes_as_it_was() -> None:
    """An event logged, or an answer kept with a key, before display names were kept
    decodes with none, and encodes again without them: byte for byte."""
    old = (
        b'{"id":"tr_1","kind":"transfer","from_account":"acc_a","from_name":"ann",'
        b'"to_account":"acc_c","to_name":"cy","amount":"12.34","currency":"USD","memo":"",'
        b'"status":"pending","failure_reason":null,"created_at":"2026-12-01T10:00:00.123+00:00",'
        b'"settled_at":null,"expires_at":null,"settled_in_ms":null}'
    )
    decoded = wire.transfer_from(msgspec.json.decode(old, type=wire.TransferJSON))
    assert decoded.from_display_name == ""
    assert wire.encode(wire.transfer(decoded)) == old


async def test_usernames_are_case_insensitive_everywhere(stack: Stack) -> None:
    bob = await stack.customer("0", name="bobcase", display_name="Bob Case")
    alice = await stack.customer("100.00")
    with pytest.raises(errors.InvalidField, match="already exists"):
        await admin.create_user(stack.store, "BobCase", passwords.hash_password("x"))
    # Logging in, and the send form, take the username in any letter case.
    r = await stack.client.post(
        "/api/tokens", json={"username": "BOBCASE", "password": "pw-bobcase"}
    )
    assert r.status_code == 201
    async with browser(stack) as client:
        assert (
            await attempt(client, alice.username.upper(), "pw-" + alice.username)
        ).status_code == 303
        page = (await client.get(f"/accounts/{alice.account}")).text
        form = {
            "csrf_token": csrf_of(page),
            "idempotency_key": KEY.findall(page)[0],
            "to": "BobCase",
            "amount": "1.00",
            "confirm_recipient": bob.account,
        }
        sent = await client.post(f"/accounts/{alice.account}/transfers", data=form)
        assert sent.status_code == 303, sent.text
    async with stack.usecases() as ctx:
        assert await account_cases.account_named(ctx, "BOBCASE") == bob.account
    assert (await stack.account(bob))["balance"]["pending_credits"] == "1.00"
    await stack.settle_all()


async def test_the_command_line_names_people(stack: Stack) -> None:
    done = settle(
        stack.settings,
        "user",
        "create",
        "dora",
        "--password",
        "pw12345",
        "--display-name",
        "Dora Lee",
    )
    assert done.returncode == 0, done.stderr
    clash = settle(stack.settings, "user", "create", "DORA", "--password", "pw12345")
    assert clash.returncode == 1 and "already exists" in clash.stderr
    spaced = settle(stack.settings, "user", "create", "do ra", "--password", "pw12345")
    assert spaced.returncode == 1 and "without spaces" in spaced.stderr
    demo = settle(stack.settings, "demo")
    assert demo.returncode == 0, demo.stderr
    named = await stack.store.fetch_all(
        sa.select(users.c.username, users.c.display_name).order_by(users.c.username)
    )
    assert {r["username"]: r["display_name"] for r in named} == {
        "alice": "Alice Chen",
        "bank": "bank",
        "bob": "Bob Martin",
        "carol": "Carol Diaz",
        "dora": "Dora Lee",
    }
