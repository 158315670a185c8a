"""Issue 13 in a real browser: two users side by side (a desk and a 390x844 phone), with
and without JavaScript. Who was paid and when, what was not charged, every screen live,
no accidental duplicates, an honest connection indicator, errors that say the fix, the
"After sending" preview and the monthly statement."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from playwright._impl._api_structures import SetCookieParam
from playwright.async_api import Page, Route, WebSocketRoute, expect

from server.settings import Settings
from server.store import Store
from server.store.schema import transfers
from tests.browser.conftest import Live, docshot, running
from tests.conftest import Customer

ARRIVED = re.compile(r"arrived in (under a second|[0-9.]+ s)")


@pytest.fixture
async def held(settings: Settings, store: Store) -> AsyncIterator[Live]:
    """Transfers stay pending for a minute: time to look at them from every screen."""
    async with running(dataclasses.replace(settings, settle_delay_ms=60_000), store) as s:
        yield s


ALICE, BOB = "Alice Chen (@alice)", "Bob Martin (@bob)"


async def people(live: Live, deposit: str = "100.00") -> tuple[Customer, Customer]:
    """Alice and Bob as the demo names them, so that the screenshots show people."""
    alice = await live.stack.customer(deposit, name="alice", display_name="Alice Chen")
    bob = await live.stack.customer("0", name="bob", display_name="Bob Martin")
    return alice, bob


async def sent_count(live: Live, who: Customer) -> int:
    query = sa.select(sa.func.count()).where(transfers.c.from_account == who.account)
    return int(await live.stack.store.fetch_val(query))


async def last_sent(live: Live, who: Customer) -> str:
    query = (
        sa.select(transfers.c.id)
        .where(transfers.c.from_account == who.account)
        .order_by(transfers.c.created_at.desc())
        .limit(1)
    )
    return str(await live.stack.store.fetch_val(query))


async def test_rows_say_who_when_and_how_fast_on_both_sides(slow: Live) -> None:
    alice, bob = await people(slow)
    sender = await slow.open_account(alice, await slow.context(timezone="Europe/Paris"))
    recipient = await slow.open_account(bob, await slow.context(phone=True))
    await slow.send(sender, bob.username, "12.34", "lunch", first=True)

    row = sender.locator("#history li.row").first
    await expect(row.get_by_test_id("counterparty")).to_have_text(f"To {BOB}")
    await expect(row.get_by_test_id("badge")).to_have_text("Pending")
    await expect(row.get_by_test_id("detail")).to_contain_text("usually arrives in seconds")
    # The server writes UTC; the browser shows its own time zone.
    await expect(row.locator("time.when")).not_to_contain_text("UTC")
    await expect(sender.locator("#history li.row").nth(1)).to_contain_text("Bank deposit")
    await docshot(sender, "pending")

    incoming = recipient.locator("#history li.row").first
    await expect(incoming.get_by_test_id("counterparty")).to_have_text(f"From {ALICE}")
    await expect(recipient.locator("#announce")).to_contain_text(
        f"$12.34 from {ALICE} on its way to you"
    )

    await expect(row.get_by_test_id("badge")).to_have_text("Completed")
    await expect(row.get_by_test_id("detail")).to_have_text(ARRIVED)
    await expect(incoming.get_by_test_id("detail")).to_have_text(ARRIVED)
    await expect(recipient.locator("#announce")).to_contain_text(f"$12.34 received from {ALICE}")
    await docshot(sender, "completed")
    await docshot(recipient, "phone-390x844")

    await row.get_by_test_id("counterparty").click()
    await expect(sender.get_by_test_id("window")).to_have_text(re.compile(r"^[0-9.]+ ms$"))
    await expect(sender.get_by_test_id("counterparty")).to_have_text(BOB)


async def test_a_failed_transfer_is_not_a_charge_and_each_side_reads_its_own_reason(
    slow: Live,
) -> None:
    alice, bob = await people(slow)
    sender = await slow.open_account(alice)
    recipient = await slow.open_account(bob, await slow.context(phone=True))
    await slow.send(sender, bob.username, "40.00", first=True)
    row = sender.locator("#history li.row").first
    await expect(row.get_by_test_id("badge")).to_have_text("Pending")
    await slow.stack.freeze(bob.account)

    await expect(row.get_by_test_id("badge")).to_have_text("Failed")
    await expect(row.get_by_test_id("amount")).to_have_text("$40.00 not charged")
    assert await row.locator("s").count() == 1, "struck through, not a minus"
    await expect(sender.locator("#form-status")).to_contain_text("Failed: $40.00 not sent")
    incoming = recipient.locator("#history li.row").first
    await expect(incoming.get_by_test_id("detail")).to_have_text(
        "could not be delivered: your account is frozen"
    )
    await expect(incoming.get_by_test_id("amount")).to_have_text("$40.00 not received")
    await docshot(sender, "failed")
    await recipient.reload()
    await expect(recipient.get_by_test_id("frozen")).to_contain_text("This account is frozen")


async def test_dashboard_detail_page_and_form_status_follow_the_same_stream(held: Live) -> None:
    slow = held
    alice, bob = await people(slow)
    page = await slow.open_account(alice)
    dashboard = await page.context.new_page()
    await dashboard.goto(f"{slow.stack.base_url}/accounts")
    await expect(dashboard.locator("#conn")).to_have_attribute("data-state", "live")

    await slow.send(page, bob.username, "25.00", first=True)
    await expect(dashboard.get_by_test_id("held")).to_have_text("$25.00")
    await expect(dashboard.get_by_test_id("available")).to_have_text("$75.00")
    await expect(dashboard.locator("#announce")).to_contain_text(f"to {BOB}")
    await docshot(dashboard, "dashboard")

    tid = await last_sent(slow, alice)
    detail = await page.context.new_page()
    await detail.goto(f"{slow.stack.base_url}/transfers/{tid}")
    await expect(detail.locator("#conn")).to_have_attribute("data-state", "live")
    cancel = detail.get_by_role("button", name="Cancel this transfer")
    await expect(cancel).to_be_visible()

    await page.locator("#history li.row").first.get_by_role("button", name="Cancel").click()
    await expect(detail.get_by_test_id("badge")).to_have_text("Cancelled")
    await expect(cancel).to_have_count(0)
    await expect(detail.get_by_test_id("amount")).to_have_text("$25.00 not charged")
    await expect(page.locator("#form-status")).to_contain_text("Cancelled: $25.00 not sent")
    await expect(dashboard.get_by_test_id("held")).to_have_text("$0.00")
    await expect(dashboard.get_by_test_id("available")).to_have_text("$100.00")
    await docshot(detail, "cancelled")


async def test_a_stale_cancel_button_explains_itself_with_and_without_javascript(
    held: Live,
) -> None:
    slow = held
    alice, bob = await people(slow)
    tid = (await slow.stack.transfer(alice, bob.account, "5.00")).json()["id"]
    context = await slow.context()
    page = await context.new_page()

    async def deaf(ws: WebSocketRoute) -> None:
        """A stream that never says anything: the page cannot catch up."""

    await page.route_web_socket(re.compile(r".*/ws\?.*"), deaf)
    await slow.login(page, alice)
    await page.goto(f"{slow.stack.base_url}/transfers/{tid}")
    plain = await slow.open_account(alice, js=False)
    await plain.goto(f"{slow.stack.base_url}/transfers/{tid}")
    r = await slow.stack.client.post(f"/api/transfers/{tid}/cancel", headers=alice.headers)
    assert r.status_code == 200

    await page.get_by_role("button", name="Cancel this transfer").click()
    await expect(page.locator("#announce")).to_contain_text("Too late to cancel")
    await expect(page.get_by_test_id("badge")).to_have_text("Cancelled")
    await expect(page.get_by_role("button", name="Cancel this transfer")).to_have_count(0)

    await plain.get_by_role("button", name="Cancel this transfer").click()
    # Post, then redirect: the page that says so is not left on the POST's URL.
    await expect(plain).to_have_url(re.compile(rf"/transfers/{tid}\?cancel=too-late$"))
    await expect(plain.get_by_test_id("notice")).to_contain_text("it was already cancelled")
    await expect(plain.get_by_test_id("badge")).to_have_text("Cancelled")
    await expect(plain.locator("body")).not_to_contain_text("not_pending")


async def test_sending_the_same_again_asks_first_and_double_enter_stays_a_success(
    live: Live,
) -> None:
    alice, bob = await people(live)
    page = await live.open_account(alice, await live.context(phone=True))
    await live.send(page, bob.username, "4.30", first=True)
    await expect(page.locator("#form-status")).to_contain_text(f"Done: $4.30 reached {BOB}")
    await live.send(page, bob.username, "4.30")
    warning = page.get_by_test_id("duplicate")
    await expect(warning).to_contain_text(
        re.compile(r"You sent \$4\.30 to Bob Martin \(@bob\) [0-9]+ s ago\. Send again\?")
    )
    await expect(warning).to_be_focused()
    assert await sent_count(live, alice) == 1
    await docshot(page, "duplicate-warning")
    await warning.get_by_role("button", name="Send again").click()
    await expect(page.locator("#form-status")).to_contain_text("$4.30")
    await expect(warning).to_have_count(0)
    assert await sent_count(live, alice) == 2

    # Enter twice, fast: one transfer, a success, focus on it, and no error on the fresh form.
    await page.get_by_label("Recipient").fill(bob.username)
    await page.get_by_label("Amount").fill("1.00")
    await page.get_by_label("Amount").press("Enter")
    await page.keyboard.press("Enter")
    await expect(page.locator("#form-status")).to_contain_text(re.compile(r"Sent — pending|Done"))
    await expect(page.locator("#form-status")).to_be_focused()
    await expect(page.locator(".field-error")).to_have_count(0)
    await expect(page.get_by_test_id("available")).to_have_text("$90.40")
    assert await sent_count(live, alice) == 3


async def test_without_javascript_the_key_survives_a_reload_and_duplicates_ask_first(
    slow: Live,
) -> None:
    alice, bob = await people(slow)
    await slow.stack.transfer(alice, bob.account, "2.00", memo="coffee")  # paid before
    page = await slow.open_account(alice, await slow.context(js=False, phone=True), js=False)
    url = f"**/accounts/{alice.account}/transfers"

    async def lose_answer(route: Route) -> None:
        await route.fetch()
        await route.abort()

    kept = [c for c in await page.context.cookies() if c["name"] == "settle_form_key"]
    assert kept, "the form's key is kept for this browser"
    before: list[SetCookieParam] = [
        {"name": c["name"], "value": c["value"], "domain": c["domain"], "path": c["path"]}
        for c in kept
    ]
    await page.route(url, lose_answer)
    await slow.send(page, bob.username, "9.00")
    await page.unroute(url)
    # The browser never saw that answer, nor the cookie it set (Playwright's fetch kept it).
    await page.context.clear_cookies(name="settle_form_key")
    await page.context.add_cookies(before)
    await page.goto(f"{slow.stack.base_url}/accounts/{alice.account}")
    await slow.send(page, bob.username, "9.00")
    await expect(page.locator("#form-status")).to_have_text("Already sent — not charged twice.")
    assert await sent_count(slow, alice) == 2

    await slow.send(page, bob.username, "9.00")
    await expect(page.get_by_test_id("duplicate")).to_contain_text("Send again?")
    await expect(page.locator("#conn")).to_have_text(re.compile("Reload to update"))
    await docshot(page, "no-javascript-duplicate")
    await page.get_by_role("button", name="Send again").click()
    await expect(page.locator("#form-status")).to_contain_text("Sent — pending")
    assert await sent_count(slow, alice) == 3
    await docshot(page, "no-javascript")


async def test_the_connection_indicator_is_honest(live: Live) -> None:
    alice = await live.stack.customer("10.00", name="alice", display_name="Alice Chen")
    plain = await live.open_account(alice, js=False)
    await expect(plain.locator("#conn")).to_have_text("Reload to update")
    page = await live.open_account(alice)
    await expect(page.locator("#conn")).to_contain_text(re.compile(r"Live · updated"))
    await page.context.set_offline(True)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    await expect(page.locator("#conn")).to_contain_text("Offline")
    await docshot(page, "offline")
    await page.context.set_offline(False)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    # Events flowing mean Live, whatever the browser said before.
    bob = await live.stack.customer("5.00")
    await live.stack.transfer(bob, alice.account, "1.25")
    await expect(page.get_by_test_id("available")).to_have_text("$11.25")
    await expect(page.locator("#conn")).to_contain_text("Live · updated")


async def test_errors_say_the_fix_and_the_preview_follows_the_typing(live: Live) -> None:
    alice, bob = await live.stack.customer("87.66"), await live.stack.customer("0")
    page = await live.open_account(alice, await live.context(phone=True))
    await page.get_by_label("Amount").fill("abc")
    await expect(page.get_by_test_id("preview")).to_have_text(
        "Enter an amount like 12.34: digits, a dot and at most 2 decimals."
    )
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.locator("#to-error")).to_contain_text("Enter who to send to")
    await expect(page.locator("#amount-error")).to_contain_text("Enter an amount like 12.34")
    await page.get_by_label("Recipient").fill(bob.username)
    await page.get_by_label("Amount").fill("100")
    await expect(page.get_by_test_id("preview")).to_have_text(
        "That is more than you have. You have $87.66 available."
    )
    await page.get_by_label("Amount").fill("7.66")
    await expect(page.get_by_test_id("preview")).to_have_text("After sending: $80.00 available")
    await page.get_by_role("button", name="Send", exact=True).click()
    await page.get_by_role("button", name="Yes, send $7.66").click()
    await expect(page.locator("#form-status")).to_contain_text("$7.66")
    await expect(page.locator(".field-error")).to_have_count(0)


async def test_the_statement_page(live: Live) -> None:
    alice, bob = await people(live)
    await live.stack.transfer(alice, bob.account, "30.00", memo="rent")
    page = await live.open_account(alice)
    await expect(page.locator("#history li.row").first.get_by_test_id("badge")).to_have_text(
        "Completed"
    )
    await page.get_by_role("link", name="Monthly statement").click()
    await expect(page.get_by_test_id("balance-after")).to_have_text(["$100.00", "$70.00"])
    await expect(page.get_by_test_id("closing")).to_have_text("$70.00")
    async with page.expect_download() as download:
        await page.get_by_test_id("csv").click()
    path = await (await download.value).path()
    assert path is not None and "rent,30.00,,70.00" in path.read_text()
    await _back_and_forth(page)


async def _back_and_forth(page: Page) -> None:
    await page.get_by_role("link", name="Previous month").click()
    await expect(page.locator("h1")).to_contain_text("Statement for")
    await page.get_by_role("link", name="Next month").click()
    await expect(page.get_by_test_id("closing")).to_have_text("$70.00")
