"""The pages as a payments app, server-rendered (no browser, no JavaScript): names and
times on rows, amounts not charged, the duplicate question and its confirmation, the
form's key surviving a reload, human form errors, the stale Cancel, frozen accounts,
the "After sending" preview and the monthly statement page."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime

from server.domain import wording as present
from tests.conftest import Customer, Stack
from tests.test_pages import KEY, sent_by
from tests.test_sessions import browser, csrf_of, login

ROW = re.compile(r'<li id="row-[^"]+".*?</li>', re.S)


def form_of(page: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": csrf_of(page), "idempotency_key": KEY.findall(page)[0], **fields}


async def test_rows_name_the_other_party_with_a_local_time_and_the_deposit(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    await stack.transfer(alice, bob.account, "4.30", memo="coffee")
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        rows = ROW.findall(page)
        assert f"To {bob.username}" in rows[0] and "\N{MINUS SIGN}$4.30" in rows[0]
        assert "usually arrives in seconds" in rows[0] and "expected by" not in rows[0]
        assert '<time class="when" datetime="' in rows[0] and "UTC" in rows[0]
        assert "Bank deposit" in rows[1] and "+$100.00" in rows[1]
        assert bob.account not in rows[0]
    await stack.settle_all()
    async with browser(stack) as client:
        await login(client, bob)
        page = (await client.get(f"/accounts/{bob.account}")).text
        row = ROW.findall(page)[0]
        assert f"From {alice.username}" in row and "+$4.30" in row and "arrived in" in row


async def test_failed_and_cancelled_amounts_read_as_not_charged_from_each_side(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    await stack.transfer(alice, bob.account, "40.00")
    await stack.freeze(bob.account)
    await stack.settle_all()
    async with browser(stack) as client:
        await login(client, alice)
        row = ROW.findall((await client.get(f"/accounts/{alice.account}")).text)[0]
        assert "<s>$40.00</s>" in row and "not charged" in row and "\N{MINUS SIGN}$40.00" not in row
        assert "this recipient cannot receive money right now" in row
    async with browser(stack) as client:
        await login(client, bob)
        page = (await client.get(f"/accounts/{bob.account}")).text
        row = ROW.findall(page)[0]
        assert "could not be delivered: your account is frozen" in row and "not received" in row
        assert "This account is frozen" in page, "a frozen account says so on its own page"
        assert "This account is frozen" in (await client.get("/accounts")).text


async def test_the_transfer_page_shows_names_and_the_exact_window(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "2.50")).json()["id"]
    await stack.settle_all()
    async with browser(stack) as client:
        await login(client, bob)
        page = (await client.get(f"/transfers/{tid}")).text
        assert f"From {alice.username}" in page and "+$2.50" in page
        assert re.search(r'data-testid="window">[0-9.]+ ms<', page)
        assert "hx-ws:connect" in page and "Available to send" in page


async def test_a_stale_cancel_says_what_happened_instead_of_an_error_code(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "20.00")).json()["id"]
    await stack.settle_all()
    async with browser(stack) as client:
        csrf = await login(client, alice)
        r = await client.post(f"/transfers/{tid}/cancel", data={"csrf_token": csrf})
        # Without JavaScript: post, then redirect to a page that says what happened.
        assert r.status_code == 303
        assert r.headers["location"] == f"/transfers/{tid}?cancel=too-late"
        r = await client.get(r.headers["location"])
        assert "Too late to cancel" in r.text and "already been delivered" in r.text
        assert "not_pending" not in r.text and "Cancel this transfer" not in r.text
        r = await client.post(
            f"/transfers/{tid}/cancel", data={"csrf_token": csrf}, headers={"HX-Request": "true"}
        )
        assert r.status_code == 409 and "Too late to cancel" in r.text
        assert 'data-status="completed"' in r.text, "the page is repainted as it is now"


async def test_the_same_amount_to_the_same_person_asks_before_sending_again(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    url = f"/accounts/{alice.account}/transfers"
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        fields = {"to": bob.username, "amount": "4.30", "memo": ""}
        r = await client.post(url, data=form_of(page, **fields, confirm_recipient=bob.account))
        assert r.status_code == 303
        page = (await client.get(f"/accounts/{alice.account}")).text
        r = await client.post(url, data=form_of(page, **fields))
        assert r.status_code == 409
        assert re.search(rf"You sent \$4\.30 to {bob.username} [0-9]+ s ago\. Send again\?", r.text)
        assert 'name="confirm_duplicate"' in r.text and 'value="4.30"' in r.text
        assert await sent_by(stack, alice) == 1
        r = await client.post(url, data={**form_of(r.text, **fields), "confirm_duplicate": "1"})
        assert r.status_code == 303
    assert await sent_by(stack, alice) == 2
    await stack.settle_all()


async def test_the_form_key_survives_a_reload_until_its_transfer_is_known(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    url = f"/accounts/{alice.account}/transfers"
    async with browser(stack) as client:
        await login(client, alice)
        first = KEY.findall((await client.get(f"/accounts/{alice.account}")).text)[0]
        reloaded = (await client.get(f"/accounts/{alice.account}")).text
        assert KEY.findall(reloaded)[0] == first, "a reload renders the same key"
        fields = {"to": bob.username, "amount": "7.00", "confirm_recipient": bob.account}
        r = await client.post(url, data=form_of(reloaded, **fields))
        assert r.status_code == 303
        # The answer was lost; the page is reloaded; the stale form sent again: replayed.
        stale = await client.post(
            url, data={**form_of(reloaded, **fields), "idempotency_key": first}
        )
        assert stale.headers["location"].endswith("&replayed=1")
        after = (await client.get(f"/accounts/{alice.account}")).text
        assert KEY.findall(after)[0] != first, "once the transfer is known, a new key"
    assert await sent_by(stack, alice) == 1
    await stack.settle_all()


async def test_form_errors_say_the_fix_per_field_and_clear_on_the_next_attempt(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("87.66"), await stack.customer("0")
    url = f"/accounts/{alice.account}/transfers"
    cases = {
        "abc": "Enter an amount like 12.34",
        "-5": "Enter an amount above zero",
        "1,000.00": "Leave out the commas",
        "$5": "Leave out the currency sign",
        "": "Enter an amount, like 12.34.",
        "0": "Enter an amount above zero",
    }
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        for typed, message in cases.items():
            r = await client.post(url, data=form_of(page, to=bob.username, amount=typed))
            assert r.status_code == 422 and message in r.text, (typed, r.text)
            assert 'id="amount-error"' in r.text and 'id="to-error"' not in r.text
        r = await client.post(url, data=form_of(page, to="", amount="1"))
        assert 'id="to-error"' in r.text and "Enter who to send to" in r.text
        r = await client.post(url, data=form_of(page, to="", amount="x"))
        assert 'id="to-error"' in r.text and 'id="amount-error"' in r.text, "both at once"
        r = await client.post(url, data=form_of(page, to="nobody-here", amount="1"))
        assert r.status_code == 404 and "No one here is called" in r.text
        r = await client.post(url, data=form_of(page, to=bob.username, amount="100"))
        assert "You have $87.66 available" in r.text
        r = await client.post(url, data=form_of(page, to=bob.username, amount="1"))
        assert r.status_code == 200 and "You have not paid" in r.text, "first, who is it?"
        r = await client.post(
            url, data=form_of(page, to=bob.username, amount="1", confirm_recipient=bob.account)
        )
        assert r.status_code == 303, "the next good attempt goes through"
        page = (await client.get(r.headers["location"])).text
        assert "field-error" not in page and "aria-invalid" not in page
    await stack.settle_all()


async def test_the_preview_says_what_would_be_left_or_why_it_would_fail(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    url = f"/accounts/{alice.account}/preview"
    async with browser(stack) as client:
        csrf = await login(client, alice)
        data = {"csrf_token": csrf}
        r = await client.post(url, data={**data, "to": bob.username, "amount": "12.34"})
        assert r.status_code == 200 and "After sending: $37.66 available" in r.text
        r = await client.post(url, data={**data, "to": "", "amount": "10"})
        assert "After sending: $40.00 available" in r.text
        r = await client.post(url, data={**data, "to": bob.username, "amount": "60"})
        assert "You have $50.00 available" in r.text
        r = await client.post(url, data={**data, "to": bob.username, "amount": "1.234"})
        assert "Enter an amount like 12.34" in r.text
        await stack.freeze(bob.account)
        r = await client.post(url, data={**data, "to": bob.username, "amount": "1"})
        assert "cannot receive money" in r.text
        r = await client.post(url, data={"to": bob.username, "amount": "1"})
        assert r.status_code == 403, "the preview needs the session's CSRF token"
    assert await sent_by(stack, alice) == 0


async def _statement_customer(stack: Stack) -> tuple[Customer, Customer]:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    await stack.transfer(alice, bob.account, "30.00", memo="=rent")
    await stack.settle_all()
    return alice, bob


async def test_the_monthly_statement_page_and_its_csv(stack: Stack) -> None:
    alice, bob = await _statement_customer(stack)
    now = datetime.now(UTC)
    month = f"{now.year:04d}-{now.month:02d}"
    async with browser(stack) as client:
        await login(client, alice)
        r = await client.get(f"/accounts/{alice.account}/statement")
        assert r.status_code == 200
        page = r.text
        assert "Statement for " + now.strftime("%B %Y") in page
        assert re.findall(r'data-testid="balance-after">([^<]+)<', page) == ["$100.00", "$70.00"]
        assert 'data-testid="opening">$0.00<' in page and 'data-testid="closing">$70.00<' in page
        assert re.search(r'data-testid="chain-head">[0-9a-f]{64}<', page)
        assert "Bank deposit" in page and "Funding USD" not in page
        assert f"statement.csv?month={month}" in page and "Previous month" in page
        old = (await client.get(f"/accounts/{alice.account}/statement?month=2001-02")).text
        assert "Nothing arrived in or left this account in February 2001" in old
        assert "Next month" in old
        r = await client.get(f"/accounts/{alice.account}/statement.csv?month={month}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == ["Account holder", alice.username]
        rent = next(row for row in rows if row[-1:] and row[-1].startswith("tr_") and row[3])
        assert rent[1:6] == [bob.username, "'=rent", "30.00", "", "70.00"]
        r = await client.get(f"/accounts/{alice.account}/statement?month=2026-13")
        assert r.status_code == 422
        r = await client.get(f"/accounts/{bob.account}/statement")
        assert r.status_code == 404, "another user's statement does not exist for alice"


def test_window_phrases_are_human() -> None:
    assert present.window(4.2) == "arrived in under a second"
    assert present.window(1506.8) == "arrived in 1.5 s"
    assert present.window(12000) == "arrived in 12 s"
    assert present.window(180_000) == "arrived in 3 min"


async def test_without_javascript_focus_lands_on_the_result(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    url = f"/accounts/{alice.account}/transfers"
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        assert "autofocus" not in page.split('id="send"')[1], "a fresh form takes no focus"
        r = await client.post(url, data=form_of(page, to=bob.username, amount="x"))
        assert re.search(r'<input id="amount"[^>]*autofocus', r.text)
        r = await client.post(url, data=form_of(page, to=bob.username, amount="1"))
        assert re.search(r'id="confirm-recipient"[^>]*autofocus', r.text)
        r = await client.post(
            url, data=form_of(page, to=bob.username, amount="1", confirm_recipient=bob.account)
        )
        page = (await client.get(r.headers["location"])).text
        assert re.search(r'id="form-status"[^>]*autofocus', page)
    await stack.settle_all()


async def test_a_form_key_already_used_elsewhere_names_what_it_sent(stack: Stack) -> None:
    alice, bob, carol = [await stack.customer(d) for d in ("100.00", "0", "0")]
    url = f"/accounts/{alice.account}/transfers"
    async with browser(stack) as client:
        await login(client, alice)
        first_tab = (await client.get(f"/accounts/{alice.account}")).text
        second_tab = (await client.get(f"/accounts/{alice.account}")).text
        fields = {"to": bob.username, "amount": "5.00", "confirm_recipient": bob.account}
        r = await client.post(url, data=form_of(first_tab, **fields))
        assert r.status_code == 303
        r = await client.post(url, data=form_of(second_tab, to=carol.username, amount="6.00"))
        assert r.status_code == 422
        assert f"You already sent $5.00 to {bob.username} from another tab (pending)" in r.text
        assert 'value="6.00"' in r.text, "what was typed is kept"
        r = await client.post(url, data=form_of(r.text, to=carol.username, amount="6.00"))
        assert r.status_code == 200 and "You have not paid" in r.text
        fields = {"to": carol.username, "amount": "6.00", "confirm_recipient": carol.account}
        r = await client.post(url, data=form_of(r.text, **fields))
        assert r.status_code == 303, "sent again, with the new key, it goes through"
    assert await sent_by(stack, alice) == 2
    await stack.settle_all()
