"""Issue 22, server-rendered (no browser): every screen tells the truth at the edges. A
frozen account's one notice and its support link; what the form says after a lost
answer; each tab's key; the first payment to someone; statements in the reader's time
zone; the command line's edges."""

from __future__ import annotations

import csv
import io
import re
import zoneinfo
from datetime import UTC, datetime

from server.domain import statements
from server.domain.model import AccountStatus
from server.web import fragments
from tests.conftest import Stack
from tests.test_pages import KEY, sent_by
from tests.test_sessions import browser, csrf_of, login


async def test_a_frozen_account_has_one_notice_with_a_support_link(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        form = {
            "csrf_token": csrf_of(page),
            "idempotency_key": KEY.findall(page)[0],
            "to": bob.username,
            "amount": "1.00",
        }
        await stack.freeze(alice.account)
        # Sent from a page that had not caught up: the notice, focused; no second error.
        r = await client.post(f"/accounts/{alice.account}/transfers", data=form)
        assert r.status_code == 422
        assert (
            r.text.count("This account is frozen") == 1
            and 'href="/support">Contact support</a>' in r.text
        )
        assert re.search(r'data-testid="frozen" tabindex="-1" autofocus', r.text)
        assert 'id="send-button" type="submit" class="primary" disabled' in r.text
        assert 'class="alert error"' not in r.text and "field-error" not in r.text
        headers = {"HX-Request": "true", "X-CSRF-Token": form["csrf_token"]}
        r = await client.post(f"/accounts/{alice.account}/transfers", data=form, headers=headers)
        assert r.status_code == 422 and r.text.count("This account is frozen") == 1
        assert f'id="frozen-{alice.account}" class="frozen-slot" hx-swap-oob="true"' in r.text
        preview = await client.post(
            f"/accounts/{alice.account}/preview",
            data={**form, "amount": "2"},
            headers=headers,
        )
        assert "frozen" not in preview.text, "the notice already says it"
        for path in ("/accounts", f"/accounts/{alice.account}/statement"):
            assert (await client.get(path)).text.count("This account is frozen") == 1
    async with browser(stack) as client:
        support = await client.get("/support")
    assert support.status_code == 200 and "If your account is frozen" in support.text
    assert await sent_by(stack, alice) == 0


def test_the_support_link_is_the_operators_when_set() -> None:
    env = fragments.environment("mailto:help@bank.example")
    account = {"id": "acc_x", "status": AccountStatus.FROZEN}
    html = env.get_template("_frozen.html").render(account=account)
    assert '<a href="mailto:help@bank.example">Contact support</a>' in html
    error = env.get_template("error.html").render(
        status=500, code="internal_error", message="x", session=None
    )
    assert 'href="mailto:help@bank.example">contact support</a>' in error


async def test_the_server_says_what_became_of_a_form_whose_answer_was_lost(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    async with browser(stack) as client:
        csrf = await login(client, alice)
        headers = {"HX-Request": "true", "X-CSRF-Token": csrf}
        form = {"to": bob.username, "amount": "5.37", "memo": "rent", "idempotency_key": "k-1"}
        fate = f"/accounts/{alice.account}/sent"
        r = await client.post(fate, data=form, headers=headers)
        assert r.status_code == 200 and "Not sent: nothing was charged." in r.text
        assert KEY.findall(r.text) == ["k-1"] and 'value="5.37"' in r.text
        quiet = await client.post(fate, data={**form, "quiet": "1"}, headers=headers)
        assert quiet.status_code == 204 and quiet.text == ""
        assert (await client.post(fate, data=form)).status_code == 403, "CSRF, like every form"

        sent = await client.post(
            f"/accounts/{alice.account}/transfers",
            data={**form, "confirm_recipient": bob.account},
            headers=headers,
        )
        assert sent.status_code == 202
        # The answer was lost: the preview of the same form counts the hold once.
        preview = await client.post(
            f"/accounts/{alice.account}/preview", data=form, headers=headers
        )
        assert (
            "Already sent with this form: sending it again moves no money. $94.63 available."
            in preview.text
        )
        other = await client.post(
            f"/accounts/{alice.account}/preview", data={**form, "amount": "1"}, headers=headers
        )
        assert "You already sent $5.37 to" in other.text and "$94.63 available" in other.text
        r = await client.post(fate, data=form, headers=headers)
        assert r.status_code == 200 and "Sent — pending: $5.37 to" in r.text
        assert KEY.findall(r.text)[0] != "k-1", "the next form gets a new key"
        assert 'id="row-tr_' in r.text and f'id="balance-{alice.account}"' in r.text
        assert "settle_form_key" in r.headers["set-cookie"]
    assert await sent_by(stack, alice) == 1
    await stack.settle_all()


async def test_the_browser_says_the_time_zone_once(stack: Stack) -> None:
    alice = await stack.customer("10.00")
    async with browser(stack) as client:
        csrf = await login(client, alice)
        url, headers = "/settings/time-zone", {"X-CSRF-Token": csrf}
        assert (
            await client.post(url, data={"time_zone": "Mars/Olympus"}, headers=headers)
        ).status_code == 422
        assert (await client.post(url, data={"time_zone": "Asia/Kolkata"})).status_code == 403
        r = await client.post(url, data={"time_zone": "Asia/Kolkata"}, headers=headers)
        assert r.status_code == 204
        # A later visit from elsewhere does not move the months; asking to does.
        await client.post(url, data={"time_zone": "Europe/Paris"}, headers=headers)
        page = (await client.get("/accounts")).text
        assert '<meta name="settle-time-zone" content="Asia/Kolkata">' in page
        await client.post(url, data={"time_zone": "Europe/Paris", "replace": "1"}, headers=headers)
        page = (await client.get("/accounts")).text
        assert '<meta name="settle-time-zone" content="Europe/Paris">' in page


async def test_a_statement_a_bank_customer_recognizes(stack: Stack) -> None:
    alice = await stack.customer("100.00", display_name="Alice Chen")
    bob = await stack.customer("0", display_name="Bob Martin")
    carol = await stack.customer("20.00")
    await stack.transfer(alice, bob.account, "30.00", memo="rent")
    await stack.settle_all()
    await stack.transfer(alice, bob.account, "0.77", memo="tip")  # on its way
    await stack.transfer(carol, alice.account, "5.00")  # on its way to alice
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    now = datetime.now(UTC)
    async with browser(stack) as client:
        csrf = await login(client, alice)
        headers = {"X-CSRF-Token": csrf}
        await client.post(
            "/settings/time-zone", data={"time_zone": "Asia/Kolkata"}, headers=headers
        )
        page = (await client.get(f"/accounts/{alice.account}/statement")).text
        year, month = statements.month_of(now, zone)
        assert f"Statement for {datetime(year, month, 1).strftime('%B %Y')}" in page
        assert "in your time zone, Asia/Kolkata" in page
        assert 'data-testid="total-in">+$100.00<' in page
        assert 'data-testid="total-out">&minus;$30.00<' in page
        assert 'data-testid="closing">$70.00<' in page
        assert f"Bob Martin (@{bob.username})" in page
        # Times are the reader's, written by the server (no browser rewrite).
        assert re.search(
            r"<time datetime=\"[^\"]+\">[0-9]+ [A-Z][a-z]{2} [0-9]{4}, [0-9:]{5}</time>", page
        )
        pending = page.split('data-testid="pending"')[1].split("</section>")[0]
        assert pending.count('data-testid="pending-item"') == 2
        assert (
            "held: not available to send" in pending and "not available until it arrives" in pending
        )
        assert 'leaves <strong data-testid="available">$69.23</strong> available' in pending
        assert "$5.00 on its way to you becomes available when it arrives" in pending
        assert "(this month's closing balance)" in pending
        proof = page.split('<details class="card proof">')[1].split("</details>")[0]
        assert "Advanced: verify this statement" in proof and 'data-testid="chain-head"' in proof
        # Live repaints ask for the body alone.
        body = await client.get(
            f"/accounts/{alice.account}/statement", headers={"HX-Request": "true"}
        )
        assert body.text.startswith('<div id="statement-body"') and "<html" not in body.text

        r = await client.get(f"/accounts/{alice.account}/statement.csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0] == ["Account holder", f"Alice Chen (@{alice.username})"]
        assert rows[1] == ["Account", "Main", alice.account] and rows[2] == ["Currency", "USD"]
        assert rows[3][0] == "Period" and rows[4] == ["Time zone", "Asia/Kolkata"]
        header = rows.index(
            ["Date", "Description", "Memo", "Money out", "Money in", "Balance", "Reference"]
        )
        opening, deposit, rent, total, closing = rows[header + 1 :]
        assert opening[1:] == ["Opening balance", "", "", "", "0.00", ""]
        assert deposit[1:6] == ["Bank deposit", "Deposit", "", "100.00", "100.00"]
        assert rent[1:6] == [f"Bob Martin (@{bob.username})", "rent", "30.00", "", "70.00"]
        assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}", rent[0])
        assert total[1:5] == ["Total", "", "30.00", "100.00"]
        assert closing[1:6] == ["Closing balance", "", "", "", "70.00"]
    # The API keeps explicit instants in UTC, as the contract says.
    api = await stack.client.get(f"/api/accounts/{alice.account}/statement", headers=alice.headers)
    assert api.json()["from"].endswith("+00:00")
    await stack.settle_all()


async def test_a_sender_is_never_told_why_a_recipient_cannot_receive(stack: Stack) -> None:
    alice = await stack.customer("100.00")
    bob = await stack.customer("0", display_name="Bob Martin")
    await stack.freeze(bob.account)
    async with browser(stack) as client:
        csrf = await login(client, alice)
        headers = {"HX-Request": "true", "X-CSRF-Token": csrf}
        form = {"to": bob.username.upper(), "amount": "1.00", "confirm_recipient": bob.account}
        for path in ("transfers", "preview"):
            r = await client.post(f"/accounts/{alice.account}/{path}", data=form, headers=headers)
            assert f"Bob Martin (@{bob.username}) cannot receive money right now." in r.text
            assert "frozen" not in r.text.replace(f'id="frozen-{alice.account}"', "")
    assert await sent_by(stack, alice) == 0
