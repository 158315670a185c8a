"""The HTML pages over real HTTP (no browser): the plain form flow, htmx fragments,
idempotent resubmission, escaping, security headers and error pages."""

from __future__ import annotations

import re

import orjson
import sqlalchemy as sa

from server.domain import events, wire
from server.domain.events import Event
from server.store.schema import transfers
from server.web import fragments
from tests.conftest import Customer, Stack
from tests.test_sessions import browser, csrf_of, login

KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')


async def sent_by(stack: Stack, who: Customer) -> int:
    """How many transfers left this customer's account."""
    query = sa.select(sa.func.count()).where(transfers.c.from_account == who.account)
    return int(await stack.store.fetch_val(query))


async def test_html_pages_carry_the_security_headers(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        for r in [await client.get("/login"), await client.get("/nope")]:
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
        await login(client, alice)
        r = await client.get(f"/accounts/{alice.account}")
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
        assert "<script>" not in r.text, "no inline script: everything comes from /static"


async def test_unknown_pages_get_a_friendly_html_404_and_the_api_keeps_json(stack: Stack) -> None:
    alice, bob = await stack.customer(), await stack.customer()
    async with browser(stack) as client:
        r = await client.get("/no/such/page")
        assert r.status_code == 404 and "We can't find that page" in r.text
        await login(client, alice)
        r = await client.get(f"/accounts/{bob.account}")
        assert r.status_code == 404, "another user's account does not exist for alice"
        assert "We can't find that page" in r.text and bob.account not in r.text
    r = await stack.client.get("/api/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_pages_redirect_to_login_when_signed_out(stack: Stack) -> None:
    async with browser(stack) as client:
        r = await client.get("/accounts")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/accounts"
        r = await client.get("/accounts", headers={"HX-Request": "true"})
        assert r.status_code == 401 and r.headers["hx-redirect"].startswith("/login")


async def test_dashboard_lists_accounts_with_balances(stack: Stack) -> None:
    alice = await stack.customer("1234.50")
    async with browser(stack) as client:
        await login(client, alice)
        r = await client.get("/accounts")
        assert f'href="/accounts/{alice.account}"' in r.text and "$1,234.50" in r.text


async def test_plain_form_post_redirects_to_the_account_page_showing_the_pending_transfer(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    async with browser(stack) as client:
        await login(client, alice)
        page = (await client.get(f"/accounts/{alice.account}")).text
        form = {
            "csrf_token": csrf_of(page),
            "idempotency_key": KEY.findall(page)[0],
            "to": bob.username,
            "amount": "12.34",
            "memo": "lunch",
            "confirm_recipient": bob.account,  # the first payment to bob: "Yes, send"
        }
        r = await client.post(f"/accounts/{alice.account}/transfers", data=form)
        assert r.status_code == 303
        assert r.headers["location"].startswith(f"/accounts/{alice.account}?sent=tr_")
        page = (await client.get(r.headers["location"])).text
        assert "Sent — pending" in page and "lunch" in page
        assert 'data-status="pending"' in page and "$87.66" in page

        # The same form again (back button, double submit): one transfer, and it says so.
        r = await client.post(f"/accounts/{alice.account}/transfers", data=form)
        assert r.headers["location"].endswith("&replayed=1")
        page = (await client.get(r.headers["location"])).text
        assert "Already sent — not charged twice." in page
    assert await sent_by(stack, alice) == 1
    await stack.settle_all()


async def test_htmx_post_answers_with_the_row_balance_announcement_and_a_fresh_form(
    stack: Stack,
) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    async with browser(stack) as client:
        csrf = await login(client, alice)
        form = {
            "to": bob.account,
            "amount": "10",
            "idempotency_key": "form-1",
            "confirm_recipient": bob.account,
        }
        headers = {"HX-Request": "true", "X-CSRF-Token": csrf}
        r = await client.post(f"/accounts/{alice.account}/transfers", data=form, headers=headers)
        assert r.status_code == 202, r.text
        assert r.text.startswith('<section id="send"')
        assert KEY.findall(r.text)[0] != "form-1", "a new form gets a new key"
        assert 'id="row-tr_' in r.text and 'data-status="pending"' in r.text
        assert f'id="balance-{alice.account}"' in r.text and "$90.00" in r.text
        assert 'id="announce"' in r.text and "held for a pending transfer" in r.text

        again = await client.post(
            f"/accounts/{alice.account}/transfers", data=form, headers=headers
        )
        assert again.status_code == 202 and "not charged twice" in again.text
    assert await sent_by(stack, alice) == 1
    await stack.settle_all()


async def test_form_errors_render_inline_and_keep_what_was_typed(stack: Stack) -> None:
    alice = await stack.customer("5.00")
    async with browser(stack) as client:
        csrf = await login(client, alice)
        headers = {"HX-Request": "true", "X-CSRF-Token": csrf}
        url = f"/accounts/{alice.account}/transfers"
        r = await client.post(url, data={"to": "nobody", "amount": "1"}, headers=headers)
        assert r.status_code == 404 and 'id="to-error"' in r.text and 'value="nobody"' in r.text
        # NUL breaks the text rule (and cannot be stored in PostgreSQL text): 422, no 500.
        r = await client.post(url, data={"to": "bob\x00", "amount": "1"}, headers=headers)
        assert r.status_code == 422 and 'id="to-error"' in r.text
        r = await client.post(url, data={"to": alice.username, "amount": "1.234"}, headers=headers)
        assert r.status_code == 422 and 'id="amount-error"' in r.text
        other = await stack.customer("0")
        r = await client.post(url, data={"to": other.username, "amount": "9"}, headers=headers)
        assert r.status_code == 422 and "You have $5.00 available" in r.text
    assert await sent_by(stack, alice) == 0


async def test_memos_and_names_are_escaped(stack: Stack) -> None:
    alice, bob = await stack.customer("10.00"), await stack.customer("0")
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    r = await stack.transfer(alice, bob.account, "1.00", memo=evil)
    assert r.status_code == 202
    async with browser(stack) as client:
        await login(client, bob)
        page = (await client.get(f"/accounts/{bob.account}")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
        assert "<img src=x" not in page
    content = fragments.content_renderer(fragments.environment())(
        from_message(
            {
                "type": "transfer.pending",
                "account": bob.account,
                "seq": 9,
                "transfer": {k: v for k, v in r.json().items() if k != "balance"},
                "balance": r.json()["balance"],
            }
        )
    )
    assert "<img src=x" not in content and "&lt;script&gt;" in content
    await stack.settle_all()


async def test_sender_cancels_a_pending_transfer_from_the_page(stack: Stack) -> None:
    alice, bob = await stack.customer("50.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "20.00")).json()["id"]
    async with browser(stack) as client:
        csrf = await login(client, alice)
        page = await client.get(f"/transfers/{tid}")
        assert "Cancel this transfer" in page.text
        r = await client.post(
            f"/transfers/{tid}/cancel",
            data={"csrf_token": csrf},
            headers={"HX-Request": "true"},
        )
        assert r.status_code == 200 and 'data-status="cancelled"' in r.text
        assert "Cancelled: $20.00 released" in r.text
        r = await client.post(f"/transfers/{tid}/cancel", data={"csrf_token": csrf})
        assert r.status_code == 303 and r.headers["location"].endswith("?cancel=too-late")
        assert "no longer pending" in (await client.get(r.headers["location"])).text
    await stack.settle_all()


def test_stream_content_repaints_balance_row_and_announces_the_outcome() -> None:
    render = fragments.content_renderer(fragments.environment())
    transfer = {
        "id": "tr_x",
        "kind": "transfer",
        "from_account": "acc_a",
        "from_name": "alice",
        "to_account": "acc_b",
        "to_name": "bob",
        "amount": "12.00",
        "currency": "USD",
        "memo": "",
        "status": "failed",
        "failure_reason": "account_frozen",
        "created_at": "2026-12-07T10:00:00.000+00:00",
        "settled_at": "2026-12-07T10:00:00.003+00:00",
        "expires_at": None,
        "settled_in_ms": 3.0,
    }
    balance = {
        "posted": "100.00",
        "pending_debits": "0.00",
        "pending_credits": "0.00",
        "available": "100.00",
        "projected": "100.00",
    }
    message = {"type": "transfer.failed", "account": "acc_a", "seq": 3}
    html = render(from_message({**message, "transfer": transfer, "balance": balance}))
    assert 'id="balance-acc_a"' in html and 'data-version="3"' in html
    assert 'id="row-tr_x"' in html and "the recipient&#39;s account is frozen" in html
    assert "$12.00 released: the transfer to bob failed" in html and 'aria-live="polite"' in html
    # A snapshot carries no fragments: the page reloads its history (static/settle.js).
    snapshot = {"type": "snapshot", "account": "acc_a", "seq": 7, "balance": balance}
    assert events.parse(events.decode(orjson.dumps(snapshot)) or NOT_AN_EVENT) is None


NOT_AN_EVENT = wire.EventJSON("ping", "", 0)


def from_message(message: dict[str, object]) -> Event:
    """A stream message as the hub reads it back before rendering its fragments."""
    decoded = events.decode(orjson.dumps(message))
    assert decoded is not None
    event = events.parse(decoded)
    assert event is not None
    return event


def test_javascript_shipped_to_a_page_stays_under_60_kb() -> None:
    base = (fragments.TEMPLATES_DIR / "base.html").read_text()
    scripts = re.findall(r'<script src="/static/([^"]+)"', base)
    assert "vendor/htmx-4.0.1/htmx.min.js" in scripts
    assert "vendor/htmx-4.0.1/hx-ws.min.js" in scripts
    size = sum((fragments.STATIC_DIR / s).stat().st_size for s in scripts)
    assert size < 60 * 1024, f"{size} bytes of JavaScript"
