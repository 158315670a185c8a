"""Passkeys in Chromium, with a CDP virtual authenticator (ctap2, internal, resident key,
user verification): adding one; a large transfer awaiting it, held on the sender's
screens and unseen by the recipient's; confirming it in place, then both screens live
through pending and completed; one left unconfirmed cancelled live; below the threshold
straight to pending; no passkey above it refused with the link; an assertion made for
one transfer refused for another.

Passkeys need a host name (an IP address cannot be a relying party's id): these pages are
served at http://localhost:PORT, which is SETTLE_PUBLIC_URL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from jobs.worker import stop_worker
from server.settings import Settings
from server.store import Store
from server.web.app import create_app
from tests.browser.conftest import ARGS, CHROMIUM, SETTLE_DELAY_MS, Live, docshot
from tests.conftest import Customer, Stack, free_socket, serve

TIMEOUT = 15_000


@contextlib.asynccontextmanager
async def at_localhost(settings: Settings, store: Store) -> AsyncIterator[Live]:
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = dataclasses.replace(settings, public_url=f"http://localhost:{port}")
    app = create_app(settings, store=store)
    async with (
        serve(app, settings, sock) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        async_playwright() as pw,
    ):
        stack = Stack(settings, store, settings.public_url, client)
        worker = stack.worker(burst=False)
        task = asyncio.create_task(worker.main())
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield Live(stack, browser)
        finally:
            await browser.close()
            await stop_worker(worker, task, settings.job_timeout_s)


@pytest.fixture
async def keys(settings: Settings, store: Store) -> AsyncIterator[Live]:
    """Settled after SETTLE_DELAY_MS (the pending state visible); unconfirmed transfers
    cancelled after 2 s."""
    changed = dataclasses.replace(settings, settle_delay_ms=SETTLE_DELAY_MS, confirm_ttl_s=2)
    async with at_localhost(changed, store) as live:
        yield live


async def authenticator(context: BrowserContext, page: Page) -> Any:
    """A virtual platform authenticator for this tab, user verification always given."""
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    options = {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
    }
    return await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})


async def with_passkey(live: Live, who: Customer) -> Page:
    """``who``'s account page, in a tab whose authenticator holds their new passkey."""
    context = await live.context()
    page = await context.new_page()
    await authenticator(context, page)
    await live.login(page, who)
    await page.get_by_role("link", name="Security").click()
    await expect(page.get_by_test_id("no-passkeys")).to_be_visible()
    await page.get_by_label("Name for a new passkey").fill("This laptop")
    await page.get_by_label("Your password", exact=False).last.fill("pw-" + who.username)
    await page.get_by_test_id("add-passkey").click()
    await expect(page.get_by_test_id("passkey-name")).to_have_text("This laptop", timeout=TIMEOUT)
    await docshot(page, "security-passkey")
    await page.goto(f"{live.stack.base_url}/accounts/{who.account}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    return page


async def send_first(live: Live, page: Page, to: str, amount: str, shown: str) -> None:
    """Send to ``to`` for the first time: the page asks first ("Send $1,500.00 to …?")."""
    await live.send(page, to, amount)
    question = page.get_by_test_id("confirm-recipient")
    await question.get_by_role("button", name=f"Yes, send {shown}").click()


def status_line(page: Page) -> Any:
    return page.get_by_test_id("status-text")


async def transfer_id(page: Page) -> str:
    element = status_line(page)
    await expect(element).to_be_visible(timeout=TIMEOUT)
    return (await element.get_attribute("id") or "").removeprefix("status-")


async def test_a_large_transfer_awaits_the_passkey_then_both_screens_follow_it_live(
    keys: Live,
) -> None:
    stack = keys.stack
    alice = await stack.customer("5000.00", name="alice", display_name="Alice Chen")
    bob = await stack.customer("0", name="bob", display_name="Bob Martin")
    mine = await with_passkey(keys, alice)
    theirs = await keys.open_account(bob)
    await mine.bring_to_front()

    await send_first(keys, mine, bob.username, "1500.00", "$1,500.00")
    await expect(status_line(mine)).to_contain_text(
        "Confirm $1,500.00 to Bob Martin", timeout=TIMEOUT
    )
    tid = await transfer_id(mine)
    await expect(mine.get_by_test_id("available")).to_contain_text("$3,500.00")
    await expect(mine.locator(f"#row-{tid}")).to_contain_text("Awaiting confirmation")
    await docshot(mine, "awaiting-confirmation")
    await expect(mine.get_by_test_id("held")).to_have_text("$1,500.00")
    # The recipient's open page hears nothing of it.
    assert await theirs.locator(f"#row-{tid}").count() == 0
    await expect(theirs.get_by_test_id("incoming")).to_have_text("$0.00")

    await mine.bring_to_front()
    await mine.get_by_test_id("confirm-passkey").click()
    await expect(theirs.locator(f"#row-{tid}")).to_contain_text("Pending", timeout=TIMEOUT)
    await expect(status_line(mine)).to_contain_text("Sent — pending", timeout=TIMEOUT)
    await expect(theirs.locator(f"#row-{tid}")).to_contain_text("Completed", timeout=TIMEOUT)
    await expect(mine.locator(f"#row-{tid}")).to_contain_text("Completed", timeout=TIMEOUT)
    await expect(status_line(mine)).to_contain_text("Done: $1,500.00 reached Bob Martin")
    await docshot(mine, "confirmed-completed")


async def test_unconfirmed_it_is_cancelled_live_and_released(keys: Live) -> None:
    stack = keys.stack
    alice = await stack.customer("5000.00", name="alice", display_name="Alice Chen")
    bob = await stack.customer("0", name="bob", display_name="Bob Martin")
    mine = await with_passkey(keys, alice)
    await send_first(keys, mine, bob.username, "2000.00", "$2,000.00")
    tid = await transfer_id(mine)
    await expect(status_line(mine)).to_contain_text("Confirm $2,000.00 to Bob Martin")
    await expect(status_line(mine)).to_contain_text(
        "Not confirmed in time: $2,000.00 not sent to Bob Martin", timeout=TIMEOUT
    )
    await expect(mine.locator(f"#row-{tid}")).to_contain_text("Cancelled")
    await expect(mine.get_by_test_id("available")).to_contain_text("$5,000.00")
    await docshot(mine, "not-confirmed")


async def test_below_the_threshold_it_is_pending_at_once(keys: Live) -> None:
    stack = keys.stack
    alice, bob = await stack.customer("5000.00"), await stack.customer("0", display_name="Bo")
    mine = await with_passkey(keys, alice)
    await send_first(keys, mine, bob.username, "1000.00", "$1,000.00")
    await expect(status_line(mine)).to_contain_text("Sent — pending", timeout=TIMEOUT)
    await expect(mine.get_by_test_id("confirm-passkey")).to_have_count(0)


async def test_without_a_passkey_above_the_threshold_it_is_refused_with_the_link(
    keys: Live,
) -> None:
    stack = keys.stack
    alice = await stack.customer("5000.00", name="alice", display_name="Alice Chen")
    bob = await stack.customer("0", name="bob", display_name="Bob Martin")
    page = await keys.open_account(alice)
    await send_first(keys, page, bob.username, "1000.01", "$1,000.01")
    refusal = page.locator("#form-error")
    await expect(refusal).to_contain_text("confirmed with a passkey", timeout=TIMEOUT)
    await docshot(page, "passkey-required")
    await page.get_by_test_id("add-passkey-link").click()
    await page.wait_for_url("**/security")


async def test_an_assertion_for_one_transfer_is_refused_for_another(keys: Live) -> None:
    stack = keys.stack
    alice, bob = await stack.customer("5000.00"), await stack.customer("0")
    mine = await with_passkey(keys, alice)
    ids = []
    for _ in range(2):
        r = await stack.client.post(
            "/api/transfers",
            json={"from_account": alice.account, "to_account": bob.account, "amount": "1200.00"},
            headers=alice.headers,
        )
        assert r.json()["status"] == "awaiting_confirmation", r.text
        ids.append(r.json()["id"])
    a, b = ids
    answer = await mine.evaluate(CROSS_POST, {"a": a, "b": b})
    assert answer["status"] == 422 and answer["code"] == "confirmation_invalid", answer
    assert await stack.status_of(alice, b) == "awaiting_confirmation"
    assert await stack.status_of(alice, a) == "awaiting_confirmation"


# In the page: an assertion over A's challenge, made by the tab's authenticator, posted
# to B's confirmation.
CROSS_POST = """async ({a, b}) => {
  const b64 = (t) => Uint8Array.from(atob(t.replace(/-/g, "+").replace(/_/g, "/")
    + "=".repeat((4 - t.length % 4) % 4)), (c) => c.charCodeAt(0)).buffer;
  const enc = (buf) => buf && btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const {publicKey} = await (await fetch(`/api/transfers/${a}/confirmation`)).json();
  publicKey.challenge = b64(publicKey.challenge);
  for (const c of publicKey.allowCredentials) c.id = b64(c.id);
  const cred = await navigator.credentials.get({publicKey});
  const r = cred.response;
  const body = {id: cred.id, rawId: enc(cred.rawId), type: cred.type, response: {
    clientDataJSON: enc(r.clientDataJSON), authenticatorData: enc(r.authenticatorData),
    signature: enc(r.signature), userHandle: enc(r.userHandle)}, clientExtensionResults: {}};
  const answer = await fetch(`/api/transfers/${b}/confirmation`, {method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(body)});
  const data = await answer.json();
  return {status: answer.status, code: data.error && data.error.code};
}"""
