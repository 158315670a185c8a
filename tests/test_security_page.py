"""The Security page and the confirm page, as plain HTML (no JavaScript): passkeys
listed, renamed and removed only with the password; where passkeys work when the page
is reached under another host; the confirm page's details and its Cancel."""

from __future__ import annotations

from tests.conftest import Stack
from tests.test_confirmations import give_passkey
from tests.test_sessions import browser, login


async def test_passkeys_are_listed_renamed_and_removed_only_with_the_password(
    stack: Stack,
) -> None:
    alice = await stack.customer("0")
    await give_passkey(stack.store, alice, "cred-a")
    async with browser(stack) as client:
        csrf = await login(client, alice)
        page = (await client.get("/security")).text
        assert "test key" in page and 'href="/security"' in page
        # Reached at 127.0.0.1, not SETTLE_PUBLIC_URL's localhost: it says where to go.
        assert "Passkeys only work at" in page and "http://localhost:8000/security" in page
        r = await client.post(
            "/security/passkeys/cred-a/name", data={"csrf_token": csrf, "name": "Phone"}
        )
        assert r.status_code == 303
        assert "Phone" in (await client.get("/security")).text
        r = await client.post(
            "/security/passkeys/cred-a/remove", data={"csrf_token": csrf, "password": "nope"}
        )
        assert r.status_code == 403 and "not your password" in r.text
        assert "Phone" in (await client.get("/security")).text
        r = await client.post(
            "/security/passkeys/cred-a/remove",
            data={"csrf_token": csrf, "password": "pw-" + alice.username},
        )
        assert r.status_code == 303
        assert "You have no passkey yet" in (await client.get("/security")).text
        r = await client.post("/security/passkeys/cred-a/name", data={"name": "x"})
        assert r.status_code == 403, "CSRF like every page"


async def test_the_confirm_page_shows_what_is_confirmed_and_offers_cancel(
    stack: Stack,
) -> None:
    alice = await stack.customer("5000.00")
    bob = await stack.customer("0", display_name="Bob Martin")
    await give_passkey(stack.store, alice)
    tid = (await stack.transfer(alice, bob.account, "1500.00")).json()["id"]
    async with browser(stack) as client:
        csrf = await login(client, alice)
        page = (await client.get(f"/transfers/{tid}/confirm")).text
        assert "Confirm $1,500.00 to Bob Martin" in page
        assert f"@{bob.username}" in page and alice.account in page
        assert "needs a browser with JavaScript" in page  # in <noscript>
        account_page = (await client.get(f"/accounts/{alice.account}")).text
        assert f'href="/transfers/{tid}/confirm"' in account_page
        r = await client.post(f"/transfers/{tid}/cancel", data={"csrf_token": csrf})
        assert r.status_code == 303
        assert "Nothing to confirm" in (await client.get(f"/transfers/{tid}/confirm")).text
    async with browser(stack) as client:
        await login(client, bob)
        assert (await client.get(f"/transfers/{tid}/confirm")).status_code == 404
        assert (await client.get(f"/transfers/{tid}")).status_code == 404
