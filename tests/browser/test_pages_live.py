"""The pages in a real browser, against a real server and worker: what users see while
a transfer goes pending → completed (or failed), across tabs, reloads, dropped
connections and double clicks; and without JavaScript."""

from __future__ import annotations

import re

import sqlalchemy as sa
from playwright.async_api import WebSocketRoute, expect

from server.store.schema import transfers
from tests.browser.conftest import Live, screenshot
from tests.conftest import Customer, account_events, next_event

SETTLED = re.compile(r"arrived in (under a second|[0-9.]+ s)")


async def sent_by(live: Live, who: Customer) -> list[str]:
    rows = await live.stack.store.fetch_all(
        sa.select(transfers.c.id).where(transfers.c.from_account == who.account)
    )
    return [r["id"] for r in rows]


async def test_sending_shows_pending_and_the_held_balance_at_once_then_completes_live(
    slow: Live,
) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    page = await slow.open_account(alice)
    await screenshot(page, "01-account-live")
    await page.evaluate("window.notReloaded = true")

    # Keyboard only: Tab from the top of the page into the form, type, press Enter.
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "to":
            break
    else:
        raise AssertionError("the recipient field cannot be reached with Tab")
    await page.keyboard.type(bob.username)
    await page.keyboard.press("Tab")
    await page.keyboard.type("12.34")
    await page.keyboard.press("Tab")
    await page.keyboard.type("lunch")
    await page.keyboard.press("Enter")
    # The first payment to bob asks who it is for; focus is on the question.
    question = page.get_by_test_id("confirm-recipient")
    await expect(question).to_be_focused()
    await expect(question).to_contain_text(f"Send $12.34 to {bob.username}?")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")

    row = page.locator("#history li.row").first
    await expect(row.get_by_test_id("badge")).to_have_text("Pending")
    await expect(page.get_by_test_id("available")).to_have_text("$87.66")
    await expect(page.get_by_test_id("held")).to_have_text("$12.34")
    # Said once: by the status line, which has the focus (the announcement keeps quiet).
    await expect(page.get_by_test_id("change")).to_contain_text("held for a pending transfer")
    await expect(page.locator("#form-status")).to_be_focused()
    await expect(page.locator("#form-status")).to_contain_text(
        f"Sent — pending: $12.34 to {bob.username}, usually arrives in seconds."
    )
    await screenshot(page, "02-pending")

    await expect(row.get_by_test_id("badge")).to_have_text("Completed")
    await expect(row).to_contain_text(SETTLED)
    await expect(page.get_by_test_id("posted")).to_have_text("$87.66")
    await expect(page.get_by_test_id("held")).to_have_text("$0.00")
    await expect(page.locator("#announce")).to_contain_text(f"$12.34 sent to {bob.username}")
    await expect(page.locator("#form-status")).to_contain_text(
        f"Done: $12.34 reached {bob.username}"
    )
    assert await page.evaluate("window.notReloaded") is True
    await screenshot(page, "03-completed")


async def test_reloading_while_pending_renders_the_pending_transfer(slow: Live) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    page = await slow.open_account(alice)
    await slow.send(page, bob.username, "5.00", "rent", first=True)
    await expect(page.locator("#history li.row").first).to_contain_text("Pending")
    await page.reload()
    row = page.locator("#history li.row").first
    await expect(row.get_by_test_id("badge")).to_have_text("Pending")
    await expect(row).to_contain_text("rent")
    await expect(page.get_by_test_id("available")).to_have_text("$95.00")
    await expect(row.get_by_test_id("badge")).to_have_text("Completed")


async def test_the_recipient_and_a_second_tab_of_the_sender_see_it_move(slow: Live) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    sender = await slow.open_account(alice)
    context = sender.context
    second_tab = await context.new_page()
    await second_tab.goto(f"{slow.stack.base_url}/accounts/{alice.account}")
    await expect(second_tab.locator("#conn")).to_have_attribute("data-state", "live")
    recipient = await slow.open_account(bob, await slow.context(phone=True))

    await slow.send(sender, bob.username, "30.00", "tickets", first=True)

    incoming = recipient.locator("#history li.row").first
    await expect(incoming.get_by_test_id("badge")).to_have_text("Pending")
    await expect(incoming).to_contain_text("+$30.00")
    await expect(recipient.get_by_test_id("incoming")).to_have_text("$30.00")
    await expect(recipient.locator("#announce")).to_contain_text("on its way to you")
    await expect(second_tab.get_by_test_id("available")).to_have_text("$70.00")
    await screenshot(recipient, "04-phone-recipient-incoming-pending")

    await expect(incoming.get_by_test_id("badge")).to_have_text("Completed")
    await expect(recipient.get_by_test_id("posted")).to_have_text("$30.00")
    await expect(recipient.get_by_test_id("available")).to_have_text("$30.00")
    second_row = second_tab.locator("#history li.row").first
    await expect(second_row.get_by_test_id("badge")).to_have_text("Completed")
    await screenshot(recipient, "05-phone-recipient-received")


async def test_a_failed_transfer_shows_the_reason_and_rolls_the_balance_back(slow: Live) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    page = await slow.open_account(alice)
    await slow.send(page, bob.username, "40.00", first=True)
    row = page.locator("#history li.row").first
    await expect(row.get_by_test_id("badge")).to_have_text("Pending")
    await expect(page.get_by_test_id("available")).to_have_text("$60.00")
    await row.get_by_role("button", name="Cancel").wait_for()

    await slow.stack.freeze(bob.account)

    await expect(row.get_by_test_id("badge")).to_have_text("Failed")
    await expect(row).to_contain_text("this recipient cannot receive money right now")
    await expect(page.get_by_test_id("available")).to_have_text("$100.00")
    await expect(page.get_by_test_id("change")).to_contain_text("$40.00 released")
    await expect(page.locator("#announce")).to_contain_text("failed")
    await expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
    await screenshot(page, "06-failed-rolled-back")


async def test_double_click_and_a_retry_after_a_network_error_send_money_once(
    live: Live,
) -> None:
    alice, bob = await live.stack.customer("100.00"), await live.stack.customer("0")
    page = await live.open_account(alice)
    await page.get_by_label("Recipient").fill(bob.username)
    await page.get_by_label("Amount").fill("1.00")
    await page.get_by_role("button", name="Send", exact=True).click()
    await page.get_by_role("button", name="Yes, send $1.00").dblclick()
    await expect(page.locator("#form-status")).to_contain_text(re.compile("Sent — pending|Done"))
    await expect(page.get_by_test_id("available")).to_have_text("$99.00")
    assert len(await sent_by(live, alice)) == 1

    # The request reaches the server, but the browser never hears back.
    async def lose_response(route: object) -> None:
        await route.fetch()  # type: ignore[attr-defined]
        await route.abort()  # type: ignore[attr-defined]

    pattern = f"**/accounts/{alice.account}/transfers"
    await page.route(pattern, lose_response)
    await live.send(page, bob.username, "2.00", "retry me")
    # The page asks the server what became of it: sent, so it says so (not "retry").
    await expect(page.locator("#form-status")).to_contain_text(
        re.compile(r"(Sent — pending|Done): \$2\.00")
    )
    await page.unroute(pattern)
    await page.get_by_role(
        "button", name="Send", exact=True
    ).click()  # the fresh, empty form: nothing
    await expect(page.get_by_test_id("available")).to_have_text("$97.00")
    await expect(page.locator(".field-error")).to_have_count(0)
    await screenshot(page, "07-already-sent")
    assert len(await sent_by(live, alice)) == 2


async def test_a_page_that_lost_its_connection_catches_up_on_reconnect(slow: Live) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    context = await slow.context()
    page = await context.new_page()
    state: dict[str, object] = {"cut": False, "open": []}

    async def through(ws: WebSocketRoute) -> None:
        if state["cut"]:
            await ws.close(code=1012, reason="network down")
            return
        server = ws.connect_to_server()
        state["open"] = [ws, server]

    await page.route_web_socket(re.compile(r".*/ws\?.*"), through)
    await slow.login(page, alice)
    await page.goto(f"{slow.stack.base_url}/accounts/{alice.account}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")

    async with account_events(slow.stack.settings, alice.account) as events:
        await slow.send(page, bob.username, "25.00", first=True)
        row = page.locator("#history li.row").first
        await expect(row.get_by_test_id("badge")).to_have_text("Pending")
        tid = (await sent_by(slow, alice))[0]
        state["cut"] = True
        for side in state["open"]:  # type: ignore[attr-defined]
            await side.close(code=1012, reason="network down")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        await next_event(events, "transfer.completed", tid)

    await expect(row.get_by_test_id("badge")).to_have_text("Pending")  # it missed the event
    await screenshot(page, "08-reconnecting")
    state["cut"] = False
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
    await expect(row.get_by_test_id("badge")).to_have_text("Completed")
    await expect(page.get_by_test_id("posted")).to_have_text("$75.00")
    await screenshot(page, "09-caught-up")


async def test_without_javascript_the_form_posts_and_redirects_to_the_pending_transfer(
    slow: Live,
) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    page = await slow.open_account(alice, js=False)
    await slow.send(page, bob.username, "8.00", "no js", first=True)
    await page.wait_for_url(re.compile(r".*/accounts/acc_[^?]+\?sent=tr_"))
    row = page.locator("#history li.row").first
    await expect(row.get_by_test_id("badge")).to_have_text("Pending")
    await expect(row).to_contain_text("no js")
    await expect(page.get_by_test_id("available")).to_have_text("$92.00")
    await expect(page.locator("#form-status")).to_contain_text("Sent — pending")
    await screenshot(page, "10-no-javascript")
    await row.get_by_role("button", name="Cancel").click()
    await expect(page.get_by_test_id("badge")).to_have_text("Cancelled")


async def test_a_hostile_memo_renders_as_inert_text_live_and_after_reload(live: Live) -> None:
    alice, bob = await live.stack.customer("10.00"), await live.stack.customer("0")
    evil = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    recipient = await live.open_account(bob)
    sender = await live.open_account(alice)
    dialogs: list[str] = []
    recipient.on("dialog", lambda d: dialogs.append(d.message))
    await live.send(sender, bob.username, "1.00", evil, first=True)

    row = recipient.locator("#history li.row").first
    await expect(row.locator(".memo")).to_have_text(evil)
    await expect(row.get_by_test_id("badge")).to_have_text("Completed")
    await recipient.reload()
    await expect(recipient.locator("#history li.row").first.locator(".memo")).to_have_text(evil)
    assert await recipient.evaluate("window.pwned") is None
    assert await sender.evaluate("window.pwned") is None
    assert await recipient.locator("#history img").count() == 0
    assert dialogs == []
    await screenshot(recipient, "11-hostile-memo-inert")


async def test_a_freeze_and_an_unfreeze_reach_every_open_page_of_the_account_live(
    live: Live,
) -> None:
    """account.frozen / account.unfrozen: the account page, the dashboard and a transfer's
    page of the account say it at once, and Send is disabled while it lasts, without a
    reload."""
    alice, bob = await live.stack.customer("100.00"), await live.stack.customer("0")
    page = await live.open_account(alice)
    await live.send(page, bob.username, "1.00", first=True)
    await expect(page.locator("#history li.row").first).to_contain_text("Completed")
    context = page.context
    dashboard = await context.new_page()
    await dashboard.goto(f"{live.stack.base_url}/accounts")
    detail = await context.new_page()
    await detail.goto(f"{live.stack.base_url}/transfers/{(await sent_by(live, alice))[0]}")
    pages = (page, dashboard, detail)
    for each in pages:
        await expect(each.locator("#conn")).to_contain_text("Live")
        await expect(each.get_by_test_id("frozen")).to_have_count(0)
    await expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    await page.evaluate("window.notReloaded = true")

    await live.stack.freeze(alice.account)
    for each in pages:
        await expect(each.get_by_test_id("frozen")).to_contain_text("This account is frozen")
    await expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    await expect(page.locator("#announce")).to_contain_text("This account was frozen")

    await live.stack.unfreeze(alice.account)
    for each in pages:
        await expect(each.get_by_test_id("frozen")).to_have_count(0)
    await expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    assert await page.evaluate("window.notReloaded") is True
