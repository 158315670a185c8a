"""Browser sessions over real HTTP: login, cookie flags, rotation, logout, CSRF on the
login form and the API, and the login rate limit."""

from __future__ import annotations

import re

import httpx
import pytest

from server.web import sessions, throttle
from tests.conftest import Customer, Stack

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = TOKEN.search(html)
    assert match is not None, "no csrf_token field on the page"
    return match.group(1)


def browser(stack: Stack) -> httpx.AsyncClient:
    """A fresh cookie jar, as a new browser would have."""
    return httpx.AsyncClient(base_url=stack.base_url, timeout=30)


async def attempt(
    client: httpx.AsyncClient, username: str, password: str, **headers: str
) -> httpx.Response:
    page = await client.get("/login")
    form = {"username": username, "password": password, "csrf_token": csrf_of(page.text)}
    return await client.post("/login", data=form, headers=headers)


async def login(client: httpx.AsyncClient, who: Customer) -> str:
    """Log ``client`` in as ``who``; returns the CSRF token of the new session."""
    r = await attempt(client, who.username, "pw-" + who.username)
    assert r.status_code == 303 and r.headers["location"] == "/accounts", r.text
    return csrf_of((await client.get("/accounts")).text)


async def test_login_sets_an_httponly_samesite_cookie_and_no_secure_flag_over_http(
    stack: Stack,
) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        r = await attempt(client, alice.username, "pw-" + alice.username)
        assert r.status_code == 303
        cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(sessions.COOKIE))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
        assert len(client.cookies[sessions.COOKIE]) >= 40
        assert (await client.get("/accounts")).status_code == 200


async def test_session_cookie_is_secure_behind_an_https_proxy(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        # uvicorn trusts X-Forwarded-Proto from loopback, as from a local TLS proxy.
        r = await attempt(
            client, alice.username, "pw-" + alice.username, **{"X-Forwarded-Proto": "https"}
        )
        cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(sessions.COOKIE))
        assert "Secure" in cookie


async def test_wrong_password_and_unknown_user_get_the_same_generic_message(
    stack: Stack,
) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        wrong = await attempt(client, alice.username, "nope")
        unknown = await attempt(client, "nobody-" + alice.username, "nope")
    assert wrong.status_code == unknown.status_code == 401
    for r in (wrong, unknown):
        assert "Wrong username or password." in r.text
        assert sessions.COOKIE not in r.headers.get("set-cookie", "")


async def test_a_username_with_nul_is_refused_by_the_text_rule(stack: Stack) -> None:
    """PostgreSQL text cannot hold NUL; such a username is refused as POST /api/tokens
    refuses it (422, the login form again), never a 500."""
    alice = await stack.customer()
    async with browser(stack) as client:
        r = await attempt(client, alice.username + "\x00", "pw-" + alice.username)
        assert r.status_code == 422 and "Username must not contain NUL characters." in r.text


async def test_login_is_rate_limited_after_repeated_failures(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        for _ in range(throttle.FREE_PER_ACCOUNT):
            assert (await attempt(client, alice.username, "guess")).status_code == 401
        r = await attempt(client, alice.username, "pw-" + alice.username)
        assert r.status_code == 429, "even the right password waits out the lockout"
        assert int(r.headers["retry-after"]) > 0
        assert "Too many failed attempts" in r.text


async def test_login_rotates_the_session_and_the_old_id_stops_working(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        await login(client, alice)
        first = client.cookies[sessions.COOKIE]
        await login(client, alice)
        second = client.cookies[sessions.COOKIE]
    assert first != second
    async with browser(stack) as replay:
        replay.cookies.set(sessions.COOKIE, first)
        r = await replay.get("/accounts")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_logout_deletes_the_session_on_the_server(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        csrf = await login(client, alice)
        stolen = client.cookies[sessions.COOKIE]
        r = await client.post("/logout", data={"csrf_token": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/login"
    async with browser(stack) as thief:
        thief.cookies.set(sessions.COOKIE, stolen)
        assert (await thief.get("/accounts")).status_code == 303


async def test_login_form_without_its_csrf_token_is_refused(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        await client.get("/login")
        form = {"username": alice.username, "password": "pw-" + alice.username}
        r = await client.post("/login", data=form)
        assert r.status_code == 403
        assert sessions.COOKIE not in client.cookies


@pytest.mark.parametrize(
    ("sent", "origin", "status"),
    [(None, None, 403), ("wrong", None, 403), ("right", "https://evil.example", 403)],
)
async def test_transfer_form_refuses_missing_wrong_or_cross_site_csrf(
    stack: Stack, sent: str | None, origin: str | None, status: int
) -> None:
    alice, bob = await stack.customer(), await stack.customer("0")
    async with browser(stack) as client:
        csrf = await login(client, alice)
        form = {"to": bob.username, "amount": "5.00", "idempotency_key": "k1"}
        if sent is not None:
            form["csrf_token"] = csrf if sent == "right" else sent
        headers = {"Origin": origin} if origin else {}
        r = await client.post(f"/accounts/{alice.account}/transfers", data=form, headers=headers)
        assert r.status_code == status
    assert (await stack.account(alice))["balance"]["available"] == "100.00"


async def test_api_accepts_the_session_cookie_only_with_the_csrf_header(stack: Stack) -> None:
    alice, bob = await stack.customer(), await stack.customer("0")
    body = {"from_account": alice.account, "to_account": bob.account, "amount": "1.00"}
    async with browser(stack) as client:
        csrf = await login(client, alice)
        assert (await client.get(f"/api/accounts/{alice.account}")).status_code == 200
        assert (await client.post("/api/transfers", json=body)).status_code == 401
        r = await client.post("/api/transfers", json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 202, r.text
    await stack.settle_all()
