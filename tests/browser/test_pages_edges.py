"""Issue 22 in a real browser: every screen tells the truth, at the edges too. Two users
side by side (a desk and a 390x844 phone), with and without JavaScript: an arrival time
people can plan with, account changes on every open page, a form that agrees with the
stream whatever happened to its answer, people named as they go by, incoming money that
looks incoming, a statement a bank customer recognizes, plain words, one announcement
per event and tap targets a thumb can hit."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from playwright.async_api import Page, Route, expect

from server.settings import Settings
from server.store import Store
from server.store.schema import transfers
from tests.browser.conftest import Live, docshot, running
from tests.conftest import Customer


@pytest.fixture
async def held(settings: Settings, store: Store) -> AsyncIterator[Live]:
    """Transfers stay pending for a minute: time to look at them from every screen."""
    async with running(dataclasses.replace(settings, settle_delay_ms=60_000), store) as s:
        yield s


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


async def visible_mentions(page: Page, words: str) -> int:
    """How many elements say ``words`` themselves (not through a child) where a sighted
    person sees them (not inside what only screen readers get: .sr-only)."""
    return int(
        await page.evaluate(
            """(words) => [...document.body.querySelectorAll('*')].filter((el) =>
                 [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.includes(words))
                 && el.checkVisibility() && !el.closest('.sr-only')).length""",
            words,
        )
    )


async def test_a_freeze_shows_one_notice_with_a_support_link_on_every_open_page(
    live: Live,
) -> None:
    alice = await live.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await live.stack.customer("0", name="bob", display_name="Bob Martin")
    await live.stack.transfer(alice, bob.account, "1.00")
    page = await live.open_account(alice)
    phone = await live.open_account(alice, await live.context(phone=True))
    dashboard = await page.context.new_page()
    await dashboard.goto(f"{live.stack.base_url}/accounts")
    detail = await page.context.new_page()
    await detail.goto(f"{live.stack.base_url}/transfers/{await last_sent(live, alice)}")
    pages = (page, phone, dashboard, detail)
    for each in pages:
        await expect(each.locator("#conn")).to_have_attribute("data-state", "live")
    send = page.get_by_role("button", name="Send", exact=True)
    await expect(send).to_be_enabled()

    await live.stack.freeze(alice.account)
    for each in pages:
        notice = each.get_by_test_id("frozen")
        await expect(notice).to_contain_text("This account is frozen")
        await expect(notice.get_by_role("link", name="Contact support")).to_have_attribute(
            "href", "/support"
        )
        assert await visible_mentions(each, "frozen") == 1, "one clear notice"
    await expect(send).to_be_disabled()
    await expect(phone.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    await docshot(phone, "frozen")

    await phone.get_by_role("link", name="Contact support").click()
    await expect(phone.get_by_role("heading", name="If your account is frozen")).to_be_visible()
    await phone.go_back()
    await live.stack.unfreeze(alice.account)
    for each in (page, dashboard, detail):
        await expect(each.get_by_test_id("frozen")).to_have_count(0)
        assert await visible_mentions(each, "frozen") == 0
    await expect(send).to_be_enabled()


async def test_a_lost_answer_shows_sent_and_the_hold_is_counted_once(slow: Live) -> None:
    alice = await slow.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await slow.stack.customer("0", name="bob", display_name="Bob Martin")
    await slow.stack.transfer(alice, bob.account, "0.01")  # paid before: no question
    page = await slow.open_account(alice)

    async def lose_answer(route: Route) -> None:
        await route.fetch()  # the server accepts it
        await route.abort()  # and the browser never hears back

    pattern = f"**/accounts/{alice.account}/transfers"
    await page.route(pattern, lose_answer)
    await slow.send(page, bob.username, "5.37", "rent")
    status = page.locator("#form-status")
    await expect(status).to_contain_text(f"Sent — pending: $5.37 to Bob Martin (@{bob.username})")
    await page.unroute(pattern)
    await expect(page.get_by_test_id("available")).to_have_text("$94.62")
    await expect(status).not_to_contain_text("Network problem")
    await expect(page.get_by_label("Amount")).to_have_value("")
    await expect(status).to_contain_text(f"Done: $5.37 reached Bob Martin (@{bob.username})")
    assert await sent_count(slow, alice) == 2


async def test_with_settle_unreachable_the_form_says_not_sent_once_it_can_check(
    live: Live,
) -> None:
    alice, bob = await live.stack.customer("100.00"), await live.stack.customer("0")
    await live.stack.transfer(alice, bob.account, "0.01")  # paid before: no first-time question
    page = await live.open_account(alice)
    await page.context.set_offline(True)
    await live.send(page, bob.username, "3.00")
    status = page.locator("#form-status")
    await expect(status).to_contain_text("could not reach settle")
    await page.context.set_offline(False)
    await expect(status).to_have_text("Not sent: nothing was charged. Press Send to send it.")
    assert await sent_count(live, alice) == 1
    await expect(page.get_by_label("Amount")).to_have_value("3.00")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(status).to_contain_text(re.compile(r"Sent — pending: \$3\.00|Done: \$3\.00"))
    assert await sent_count(live, alice) == 2


async def test_double_enter_on_a_slow_page_shows_the_sent_transfer_and_no_error(
    slow: Live,
) -> None:
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    await slow.stack.transfer(alice, bob.account, "0.01")
    page = await slow.open_account(alice)

    async def a_second_late(route: Route) -> None:
        await asyncio.sleep(1)  # the slow machine of the issue: every answer a second late
        await route.continue_()

    await page.route(f"**/accounts/{alice.account}/**", a_second_late)
    await page.get_by_label("Recipient").fill(bob.username)
    await page.get_by_label("Amount").fill("2.50")
    await page.get_by_label("Amount").press("Enter")
    await page.keyboard.press("Enter")
    status = page.locator("#form-status")
    await expect(status).to_contain_text("Sent — pending: $2.50")
    await expect(status).to_be_focused()
    # Enter again, even in the fresh form's empty field: no errors replace the status.
    await page.keyboard.press("Enter")
    await page.get_by_label("Amount").press("Enter")
    await expect(status).to_be_focused()
    await expect(status).to_contain_text(re.compile(r"Sent — pending: \$2\.50|Done: \$2\.50"))
    await expect(page.locator(".field-error")).to_have_count(0)
    assert await sent_count(slow, alice) == 2


# The previews the page tried, sent and finished: counted in the page, so a test awaits
# them instead of guessing how long they take. (settle.js's own listener runs first: a
# preview it stops is tried, not asked.)
COUNT_PREVIEWS = """() => {
  window.previews = { tried: 0, asked: 0, done: 0 };
  const isPreview = (e) => /\\/preview$/.test(e.detail.ctx?.request?.action || "");
  document.addEventListener("htmx:config:request", (e) => {
    if (!isPreview(e)) return;
    window.previews.tried++;
    if (!e.defaultPrevented) window.previews.asked++;
  });
  document.addEventListener("htmx:finally:request", (e) => {
    if (isPreview(e)) window.previews.done++;
  });
}"""


async def test_a_preview_answered_after_its_send_is_not_shown(slow: Live) -> None:
    """Typed, then Send within the preview's delay: the preview already on its way is
    answered after the send committed and before the send's own answer lands ("Already
    sent with this form", about the send itself). The page shows and says nothing of it."""
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    await slow.stack.transfer(alice, bob.account, "0.01")  # paid before: no question
    page = await slow.open_account(alice)
    await page.evaluate(COUNT_PREVIEWS)
    await page.evaluate(LISTEN)
    asked, committed, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def preview_after_the_commit(route: Route) -> None:
        asked.set()
        await committed.wait()
        await route.continue_()

    async def answer_late(route: Route) -> None:
        answer = await route.fetch()  # the server has committed the transfer
        committed.set()
        await release.wait()
        await route.fulfill(response=answer)

    await page.route(f"**/accounts/{alice.account}/preview", preview_after_the_commit)
    await page.route(f"**/accounts/{alice.account}/transfers", answer_late)
    await page.get_by_label("Recipient").fill(bob.username)
    await page.get_by_label("Amount").fill("4.20")
    await asked.wait()
    await page.get_by_role("button", name="Send", exact=True).click()
    await committed.wait()
    await page.wait_for_function("() => window.previews.done === window.previews.asked")
    await expect(page.get_by_test_id("preview")).to_have_text("")
    assert not [s for s in await said(page) if s.startswith("preview")], await said(page)
    release.set()
    await expect(page.locator("#form-status")).to_contain_text("Sent — pending: $4.20")
    assert not [s for s in await said(page) if s.startswith("preview")], await said(page)
    assert await sent_count(slow, alice) == 2


async def test_no_preview_is_asked_while_a_send_is_on_its_way(slow: Live) -> None:
    """An edit while the send is still on its way (a slow network) asks no preview: it
    would be answered about the send itself."""
    alice, bob = await slow.stack.customer("100.00"), await slow.stack.customer("0")
    await slow.stack.transfer(alice, bob.account, "0.01")
    page = await slow.open_account(alice)
    await page.evaluate(COUNT_PREVIEWS)
    await page.get_by_label("Recipient").fill(bob.username)
    await page.get_by_label("Amount").fill("4.20")
    await page.wait_for_function("() => window.previews.done >= 2")  # one for each field
    previews: list[str] = []
    page.on("request", lambda r: previews.append(r.url) if r.url.endswith("/preview") else None)
    ready = asyncio.Event()

    async def slow_network(route: Route) -> None:
        await ready.wait()
        await route.continue_()

    await page.route(f"**/accounts/{alice.account}/transfers", slow_network)
    await page.get_by_role("button", name="Send", exact=True).click()
    tried = await page.evaluate("window.previews.tried")
    await page.get_by_label("Amount").press("End")
    await page.keyboard.type("0")  # the preview's delay runs out while the send waits
    await page.wait_for_function("(n) => window.previews.tried > n", arg=tried)
    ready.set()
    await expect(page.locator("#form-status")).to_contain_text("Sent — pending: $4.20")
    assert previews == []
    await expect(page.get_by_test_id("preview")).to_have_text("")
    assert await sent_count(slow, alice) == 2


async def test_two_tabs_with_javascript_each_send_on_the_first_click(live: Live) -> None:
    alice = await live.stack.customer("100.00")
    bob, carol = await live.stack.customer("0"), await live.stack.customer("0")
    for who in (bob, carol):
        await live.stack.transfer(alice, who.account, "0.01")
    first = await live.open_account(alice)
    second = await first.context.new_page()
    await second.goto(f"{live.stack.base_url}/accounts/{alice.account}")
    await expect(second.locator("#conn")).to_have_attribute("data-state", "live")
    keys = [await p.locator('input[name="idempotency_key"]').input_value() for p in (first, second)]
    assert keys[0] != keys[1], "each tab has a key of its own"

    await live.send(first, bob.username, "1.02")
    await expect(first.locator("#form-status")).to_contain_text(re.compile(r"\$1\.02 (to|reached)"))
    await live.send(second, carol.username, "2.03")
    await expect(second.locator("#form-status")).to_contain_text(
        re.compile(r"\$2\.03 (to|reached)")
    )
    await expect(second.locator("#form-status")).not_to_contain_text("already sent")
    assert await sent_count(live, alice) == 4

    # A reload keeps the tab's key: the same form sent again is a replay.
    kept = await first.locator('input[name="idempotency_key"]').input_value()
    await first.reload()
    await expect(first.locator('input[name="idempotency_key"]')).to_have_value(kept)


async def test_two_tabs_without_javascript_are_told_the_truth(slow: Live) -> None:
    alice = await slow.stack.customer("100.00")
    bob = await slow.stack.customer("0", name="bob", display_name="Bob Martin")
    carol = await slow.stack.customer("0")
    for who in (bob, carol):
        await slow.stack.transfer(alice, who.account, "0.01")
    first = await slow.open_account(alice, await slow.context(js=False), js=False)
    second = await first.context.new_page()
    await second.goto(f"{slow.stack.base_url}/accounts/{alice.account}")

    await slow.send(first, bob.username, "1.02")
    await expect(first.locator("#form-status")).to_contain_text("Sent — pending: $1.02")
    await slow.send(second, carol.username, "2.03")
    await expect(second.locator("#form-error")).to_contain_text(
        f"You already sent $1.02 to Bob Martin (@{bob.username}) from another tab"
    )
    assert await sent_count(slow, alice) == 3
    await second.get_by_role("button", name="Send", exact=True).click()
    await expect(second.locator("#form-status")).to_contain_text("Sent — pending: $2.03")
    assert await sent_count(slow, alice) == 4


async def test_people_are_named_and_a_first_payment_asks_who_it_is_for(slow: Live) -> None:
    alice = await slow.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await slow.stack.customer("0", name="bob", display_name="Bob Martin")
    bob_is = f"Bob Martin (@{bob.username})"
    sender = await slow.open_account(alice)
    recipient = await slow.open_account(bob, await slow.context(phone=True))
    await expect(sender.locator("header")).to_contain_text(f"Alice Chen (@{alice.username})")

    # Typed in capitals: the same person. The first payment to them asks first.
    await slow.send(sender, bob.username.upper(), "12.34", "lunch")
    question = sender.get_by_test_id("confirm-recipient")
    await expect(question).to_contain_text(f"Send $12.34 to {bob_is}?")
    await expect(question).to_be_focused()
    await docshot(sender, "first-payment")
    await question.get_by_role("link", name="Don't send").click()
    await expect(sender.get_by_test_id("confirm-recipient")).to_have_count(0)
    assert await sent_count(slow, alice) == 0

    await slow.send(sender, bob.username.upper(), "12.34", "lunch", first=True)
    row = sender.locator("#history li.row").first
    await expect(row.get_by_test_id("counterparty")).to_have_text(f"To {bob_is}")
    incoming = recipient.locator("#history li.row").first
    await expect(incoming.get_by_test_id("counterparty")).to_have_text(
        f"From Alice Chen (@{alice.username})"
    )
    await expect(recipient.locator("#announce")).to_contain_text(
        f"$12.34 from Alice Chen (@{alice.username}) on its way to you"
    )
    # Paid once: the next payment to them goes straight through.
    await slow.send(sender, bob.username, "1.00")
    await expect(sender.locator("#form-status")).to_contain_text(
        f"Sent — pending: $1.00 to {bob_is}"
    )

    plain = await slow.open_account(alice, await slow.context(js=False, phone=True), js=False)
    carol = await slow.stack.customer("0", name="carol", display_name="Carol Diaz")
    await slow.send(plain, carol.username, "2.00")
    await expect(plain.get_by_test_id("confirm-recipient")).to_contain_text(
        f"Send $2.00 to Carol Diaz (@{carol.username})?"
    )
    assert await sent_count(slow, alice) == 2
    await plain.get_by_role("button", name="Yes, send $2.00").click()
    await expect(plain.locator("#form-status")).to_contain_text(
        "Sent — pending: $2.00 to Carol Diaz"
    )
    assert await sent_count(slow, alice) == 3


async def test_the_statement_is_live_in_the_readers_time_zone_with_pending_money_apart(
    slow: Live,
) -> None:
    alice = await slow.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await slow.stack.customer("0", name="bob", display_name="Bob Martin")
    await slow.stack.transfer(alice, bob.account, "30.00", memo="rent")
    # Her first visit, in New York: the browser says its zone.
    page = await slow.open_account(alice, await slow.context(timezone="America/New_York"))
    await page.get_by_role("link", name="Monthly statement").click()
    await expect(page.get_by_test_id("period")).to_contain_text(
        "in your time zone, America/New_York"
    )
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await page.evaluate("window.notReloaded = true")
    await expect(page.get_by_test_id("total-out")).to_have_text("\N{MINUS SIGN}$30.00")
    await expect(page.get_by_test_id("closing")).to_have_text("$70.00")

    await slow.stack.transfer(bob, alice.account, "12.34", memo="lunch")
    item = page.get_by_test_id("pending-item")
    await expect(item).to_contain_text(f"From Bob Martin (@{bob.username})")
    await expect(item).to_contain_text("not available until it arrives")
    await expect(page.get_by_test_id("available-explained")).to_contain_text(
        "$12.34 on its way to you becomes available when it arrives"
    )
    await expect(page.get_by_test_id("total-in")).to_have_text("+$100.00")
    await docshot(page, "statement")

    await expect(item).to_have_count(0)
    await expect(page.get_by_test_id("total-in")).to_have_text("+$112.34")
    await expect(page.get_by_test_id("closing")).to_have_text("$82.34")
    await expect(page.get_by_test_id("entry")).to_have_count(3)
    assert await page.evaluate("window.notReloaded") is True

    plain = await slow.open_account(bob, await slow.context(js=False), js=False)
    await plain.goto(f"{slow.stack.base_url}/accounts/{bob.account}/statement")
    await expect(plain.get_by_test_id("period")).to_contain_text("in UTC")


# Every change a screen reader would say: a live region whose text changed, or that was
# replaced by a node saying something (said again, even when the words are the same).
LISTEN = """() => {
  window.said = [];
  if (window.listening) return;
  window.listening = true;
  const seen = new Map();
  const regions = () => document.querySelectorAll('[aria-live], [role="status"], [role="alert"]');
  const look = () => {
    for (const region of regions()) {
      const key = region.id || region.className;
      const text = region.textContent.trim();
      const before = seen.get(key);
      if (before && (before.node !== region || before.text !== text) && text) {
        window.said.push(`${key}: ${text}`);
      }
      seen.set(key, { node: region, text });
    }
  };
  look();
  new MutationObserver(look).observe(document.body, {
    childList: true, subtree: true, characterData: true,
  });
}"""


async def said(page: Page) -> list[str]:
    return list(await page.evaluate("window.said"))


async def test_screen_readers_hear_each_event_once(slow: Live) -> None:
    alice = await slow.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await slow.stack.customer("0", name="bob", display_name="Bob Martin")
    await slow.stack.transfer(alice, bob.account, "1.00")
    sender = await slow.open_account(alice)
    recipient = await slow.open_account(bob)
    await expect(recipient.get_by_test_id("posted")).to_have_text("$1.00")
    await expect(sender.get_by_test_id("posted")).to_have_text("$99.00")
    for page in (sender, recipient):
        await page.evaluate(LISTEN)

    await slow.send(sender, bob.username, "12.34")
    status = sender.locator("#form-status")
    await expect(status).to_be_focused()  # the sender hears the result from the focus
    await expect(recipient.locator("#history li.row").first).to_contain_text("Completed")
    await expect(status).to_contain_text("Done: $12.34")
    await expect(sender.locator("#history li.row").first).to_contain_text("Completed")
    # The live indicator kept saying "Live": its time moved, nothing was said.
    heard = await said(sender)
    assert len(heard) == 1 and re.fullmatch(
        rf"announce: \$12\.34 sent to Bob Martin \(@{bob.username}\) — arrived in "
        r"(under a second|[0-9.]+ s)\. Available balance \$86\.66\.",
        heard[0],
    ), heard
    heard = await said(recipient)
    assert len(heard) == 2, heard
    assert heard[0].startswith(f"announce: $12.34 from Alice Chen (@{alice.username}) on its way")
    assert heard[1].startswith(f"announce: $12.34 received from Alice Chen (@{alice.username})")

    await recipient.evaluate(LISTEN)
    await slow.stack.freeze(bob.account)
    await expect(recipient.get_by_test_id("frozen")).to_be_visible()
    await slow.stack.unfreeze(bob.account)
    await expect(recipient.get_by_test_id("frozen")).to_have_count(0)
    assert await said(recipient) == [
        "announce: This account was frozen: it cannot send or receive money.",
        "announce: This account was unfrozen: it can send and receive again.",
    ]


ACTIONS = "a[href], button, input:not([type=hidden]), summary, select, textarea"


async def too_small(page: Page) -> list[str]:
    """The visible actions of the page less than 44 px tall."""
    found: list[str] = await page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)]
             .filter((el) => el.checkVisibility() && !el.closest('.sr-only, .skip'))
             .filter((el) => el.getBoundingClientRect().height < 44)
             .map((el) => `${el.outerHTML.slice(0, 80)} ${el.getBoundingClientRect().height}`)""",
        ACTIONS,
    )
    return found


async def test_every_action_on_a_phone_is_at_least_44_px_tall(held: Live) -> None:
    alice = await held.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await held.stack.customer("0", name="bob", display_name="Bob Martin")
    tid = (await held.stack.transfer(alice, bob.account, "4.00", memo="tea")).json()["id"]
    base = held.stack.base_url
    page = await (await held.context(phone=True)).new_page()
    await page.goto(f"{base}/login")
    found = {"login": await too_small(page)}
    await held.login(page, alice)
    found["dashboard"] = await too_small(page)
    await page.goto(f"{base}/accounts/{alice.account}")
    await expect(page.get_by_role("button", name=re.compile("^Cancel"))).to_be_visible()
    await held.send(page, bob.username, "x")
    await expect(page.locator("#amount-error")).to_be_visible()
    found["account"] = await too_small(page)
    await page.goto(f"{base}/transfers/{tid}")
    await page.locator("summary").click()
    found["transfer"] = await too_small(page)
    await page.goto(f"{base}/accounts/{alice.account}/statement")
    await page.locator("summary").click()
    found["statement"] = await too_small(page)
    await page.goto(f"{base}/support")
    found["support"] = await too_small(page)
    await page.goto(f"{base}/no/such/page")
    found["error"] = await too_small(page)
    assert {k: v for k, v in found.items() if v} == {}


MUTED, GREEN = "rgb(95, 107, 122)", "rgb(15, 107, 54)"


async def test_words_a_person_can_plan_with(held: Live) -> None:
    alice = await held.stack.customer("100.00", name="alice", display_name="Alice Chen")
    bob = await held.stack.customer("20.00", name="bob", display_name="Bob Martin")
    tid = (await held.stack.transfer(alice, bob.account, "12.34", memo="lunch")).json()["id"]
    sender = await held.open_account(alice)
    recipient = await held.open_account(bob, await held.context(phone=True))

    await expect(sender.locator("h1")).to_have_text("Main account")
    row = sender.locator("#history li.row").first
    await expect(row.get_by_test_id("detail")).to_have_text(
        "on its way · usually arrives in seconds"
    )
    await expect(sender.locator("body")).not_to_contain_text("expected by")

    # Money on its way in is neutral; money that arrived (the bank's deposit) is green.
    incoming = recipient.locator("#history li.row").first
    await expect(incoming.get_by_test_id("detail")).to_have_text(
        "on its way to you · usually arrives in seconds"
    )
    await expect(incoming.get_by_test_id("amount")).to_have_css("color", MUTED)
    deposit = recipient.locator("#history li.row").nth(1)
    await expect(deposit.get_by_test_id("amount")).to_have_css("color", GREEN)
    await docshot(recipient, "phone-incoming-pending")

    # The expiry is a promise, on the transfer's page only.
    await incoming.get_by_test_id("counterparty").click()
    await expect(recipient.get_by_test_id("promise")).to_contain_text("If it isn't delivered by")
    await expect(recipient.get_by_test_id("promise")).to_contain_text(
        "it is cancelled and the money goes back to the sender"
    )
    await sender.goto(f"{held.stack.base_url}/transfers/{tid}")
    await expect(sender.get_by_test_id("promise")).to_contain_text(
        "it is cancelled and you are not charged"
    )
    await docshot(sender, "transfer-pending")

    # A deposit is "added by the bank"; milliseconds only in the technical section.
    await sender.go_back()
    await sender.locator("#history li.row").nth(1).get_by_test_id("counterparty").click()
    await expect(sender.get_by_test_id("detail")).to_have_text("added by the bank")
    await expect(sender.get_by_test_id("window")).to_be_hidden()
    assert " ms" not in await sender.locator("main").inner_text()
    await sender.get_by_text("Technical details").click()
    await expect(sender.get_by_test_id("window")).to_have_text(re.compile(r"^[0-9.]+ ms$"))

    # Your own cancel is neutral, not an error.
    await sender.go_back()
    await (
        sender.locator("#history li.row")
        .first.get_by_role("button", name=re.compile("^Cancel"))
        .click()
    )
    change = sender.get_by_test_id("change")
    await expect(change).to_have_text("Cancelled: $12.34 released — not sent to Bob Martin (@bob)")
    await expect(change).to_have_class(re.compile(r"\bneutral\b"))
    await expect(change).not_to_have_css("color", "rgb(163, 34, 27)")
