"""The authorization matrix: every API route, page and the WebSocket, as each kind of
caller (anonymous, wrong password, expired token or session, revoked token, another
user, the owner). Each gets exactly the expected status, and no response for anyone but
the owner carries the owner's account or transfer."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
from websockets.asyncio.client import connect

from server.domain.clock import now_us
from server.store import webhooks
from server.store.schema import api_tokens, sessions
from server.web import auth
from tests.conftest import Customer, Stack, execute
from tests.test_live import close_code, recv, ws_url
from tests.test_sessions import attempt, browser, csrf_of, login

DENIED = "denied"  # 401 for the API; the login redirect (or 401 for htmx) for pages


@dataclasses.dataclass
class World:
    owner: Customer
    other: Customer
    recipient: Customer
    transfer: str
    webhook: str
    delivery: str

    def secrets(self) -> tuple[str, str]:
        """What no one but the owner (and, for the transfer, the recipient) may see."""
        return self.owner.account, self.transfer


async def world(stack: Stack) -> World:
    owner, other, recipient = [await stack.customer("50.00") for _ in range(3)]
    r = await stack.transfer(owner, recipient.account, "5.00")
    assert r.status_code == 202, r.text
    hook = await stack.store.transaction(
        lambda conn: webhooks.create(
            conn, owner.user_id, "https://93.184.216.34/in", "", ("*",), "whsec_AAAA", now_us(), 10
        )
    )
    delivery = await stack.store.transaction(
        lambda conn: webhooks.add_test(conn, owner.user_id, hook.id, now_us(), "")
    )
    return World(owner, other, recipient, r.json()["id"], hook.id, delivery)


def api_routes(w: World) -> list[tuple[str, str, Any, int]]:
    """(method, path, JSON body, the owner's status): reads first, state changes last."""
    body = {"from_account": w.owner.account, "to_account": w.recipient.account, "amount": "1"}
    return [
        ("GET", "/api/accounts", None, 200),
        ("GET", f"/api/accounts/{w.owner.account}", None, 200),
        ("GET", f"/api/accounts/{w.owner.account}/transfers", None, 200),
        ("GET", f"/api/accounts/{w.owner.account}/statement", None, 200),
        ("GET", f"/api/accounts/{w.owner.account}/balance?at=2026-01-01T00:00:00Z", None, 200),
        ("GET", f"/api/accounts/{w.owner.account}/events", None, 200),
        ("GET", f"/api/transfers/{w.transfer}", None, 200),
        ("POST", "/api/transfers/preview", body, 200),
        ("GET", "/api/passkeys", None, 200),
        ("POST", "/api/passkeys/options", None, 200),
        ("POST", "/api/passkeys", {"name": "x", "credential": {}, "password": "x"}, 422),
        # Not awaiting confirmation: nothing to confirm, nothing confirmed.
        ("GET", f"/api/transfers/{w.transfer}/confirmation", None, 409),
        ("POST", f"/api/transfers/{w.transfer}/confirmation", CREDENTIAL, 422),
        ("POST", "/api/transfers", body, 202),
        ("POST", f"/api/transfers/{w.transfer}/cancel", None, 200),
        ("GET", "/api/webhooks", None, 200),
        ("POST", "/api/webhooks", {"url": "https://93.184.216.34/other"}, 201),
        ("GET", f"/api/webhooks/{w.webhook}", None, 200),
        ("GET", f"/api/webhooks/{w.webhook}/deliveries", None, 200),
        ("POST", f"/api/webhooks/{w.webhook}/test", None, 202),
        ("POST", f"/api/webhooks/{w.webhook}/deliveries/{w.delivery}/retry", None, 202),
        ("POST", f"/api/webhooks/{w.webhook}/rotate-secret", None, 200),
        ("POST", f"/api/webhooks/{w.webhook}/enable", None, 200),
        ("DELETE", f"/api/webhooks/{w.webhook}", None, 204),
        ("DELETE", "/api/tokens", None, 204),
    ]


CREDENTIAL = {"id": "x", "rawId": "x", "type": "public-key", "response": {}}


def expected_api(who: str, method: str, path: str, owner_status: int) -> int:
    if who == "owner":
        return owner_status
    if who != "other":
        return 401
    if path == "/api/webhooks":
        return owner_status  # their own endpoints
    if path.startswith("/api/passkeys"):  # their own passkeys
        return owner_status
    # Another user: lists and token revocation are about themselves; a preview answers
    # (that the account is not theirs: account_not_found, in the body); the rest is 404.
    return {"/api/accounts": 200, "/api/tokens": 204, "/api/transfers/preview": 200}.get(path, 404)


async def token_for(stack: Stack, w: World, who: str) -> dict[str, str]:
    match who:
        case "anonymous":
            return {}
        case "wrong password":
            r = await stack.client.post(
                "/api/tokens", json={"username": w.owner.username, "password": "not-it"}
            )
            assert r.status_code == 401 and "token" not in r.json()
            return {"Authorization": "Bearer not-it"}
        case "expired":
            token = await auth.issue_token(stack.store, w.owner.user_id, 3600)
            await execute(
                stack.store,
                api_tokens.update()
                .where(api_tokens.c.token_hash == auth.token_digest(token))
                .values(expires_at=1),
            )
            return {"Authorization": f"Bearer {token}"}
        case "revoked":
            token = await auth.issue_token(stack.store, w.owner.user_id, 3600)
            headers = {"Authorization": f"Bearer {token}"}
            assert (await stack.client.delete("/api/tokens", headers=headers)).status_code == 204
            return headers
        case "other":
            return w.other.headers
        case _:
            return w.owner.headers


CALLERS = ["anonymous", "wrong password", "expired", "revoked", "other", "owner"]


def leaks(w: World, who: str, text: str) -> list[str]:
    if who == "owner":
        return []
    return [s for s in w.secrets() if s in text]


async def test_the_api_matrix(stack: Stack) -> None:
    w = await world(stack)
    seen: list[tuple[str, str, str, int, int]] = []
    for who in CALLERS:
        headers = await token_for(stack, w, who)
        for method, path, body, owner_status in api_routes(w):
            r = await stack.client.request(method, path, headers=headers, json=body)
            want = expected_api(who, method, path, owner_status)
            if r.status_code != want or leaks(w, who, r.text):
                seen.append((who, method, path, want, r.status_code))
            if r.status_code == 401:
                assert r.json()["error"]["code"] == "unauthorized"
    assert seen == []
    # The recipient sees the transfer too (and nothing of the sender's account itself).
    r = await stack.client.get(f"/api/transfers/{w.transfer}", headers=w.recipient.headers)
    assert r.status_code == 200
    r = await stack.client.get(f"/api/accounts/{w.owner.account}", headers=w.recipient.headers)
    assert r.status_code == 404
    await stack.settle_all()


def page_routes(w: World) -> list[tuple[str, str, int]]:
    """(method, path, the owner's status), state changes last."""
    return [
        ("GET", "/accounts", 200),
        ("GET", f"/accounts/{w.owner.account}", 200),
        ("GET", f"/accounts/{w.owner.account}/history", 200),
        ("GET", f"/transfers/{w.transfer}", 200),
        ("GET", "/security", 200),
        # Not awaiting: the page says there is nothing to confirm.
        ("GET", f"/transfers/{w.transfer}/confirm", 200),
        ("GET", f"/accounts/{w.owner.account}/statement", 200),
        ("GET", f"/accounts/{w.owner.account}/statement.csv", 200),
        ("POST", f"/accounts/{w.owner.account}/preview", 200),
        ("POST", f"/accounts/{w.owner.account}/sent", 200),
        ("POST", "/settings/time-zone", 204),
        ("GET", "/webhooks", 200),
        ("POST", "/webhooks", 422),
        ("POST", f"/webhooks/{w.webhook}/test", 303),
        ("POST", f"/webhooks/{w.webhook}/deliveries/{w.delivery}/retry", 303),
        ("POST", f"/webhooks/{w.webhook}/rotate-secret", 200),
        ("POST", f"/webhooks/{w.webhook}/enable", 303),
        ("POST", f"/webhooks/{w.webhook}/delete", 303),
        ("POST", "/security/passkeys/no-such-key/name", 404),
        # Without the password: refused, nothing removed.
        ("POST", "/security/passkeys/no-such-key/remove", 403),
        ("POST", f"/accounts/{w.owner.account}/transfers", 303),
        ("POST", f"/transfers/{w.transfer}/cancel", 303),
    ]


async def session_for(stack: Stack, w: World, who: str, client: httpx.AsyncClient) -> str:
    """Sign ``client`` in as ``who`` would be; the CSRF token its forms carry."""
    match who:
        case "anonymous":
            return "none"
        case "wrong password":
            r = await attempt(client, w.owner.username, "not-it")
            assert r.status_code == 401 and "settle_session" not in r.cookies
            return csrf_of(r.text)
        case "expired":
            csrf = await login(client, w.owner)
            await execute(
                stack.store,
                sessions.update().where(sessions.c.user_id == w.owner.user_id).values(expires_at=1),
            )
            return csrf
        case "revoked":  # logged out: the old cookie must not work again
            csrf = await login(client, w.owner)
            cookie = client.cookies.get("settle_session")
            assert (await client.post("/logout", data={"csrf_token": csrf})).status_code == 303
            client.cookies.set("settle_session", cookie or "")
            return csrf
        case "other":
            return await login(client, w.other)
        case _:
            return await login(client, w.owner)


async def test_the_pages_matrix(stack: Stack) -> None:
    w = await world(stack)
    seen: list[tuple[str, str, str, Any, int]] = []
    for who in CALLERS:
        async with browser(stack) as client:
            csrf = await session_for(stack, w, who, client)
            for method, path, owner_status in page_routes(w):
                data = None
                if method == "POST":
                    data = {
                        "csrf_token": csrf,
                        "to": w.recipient.username,
                        "amount": "1",
                        "time_zone": "Europe/Paris",
                    }
                r = await client.request(method, path, data=data)
                if who == "owner":
                    ok = r.status_code == owner_status
                elif who == "other" and path == "/webhooks":
                    ok = r.status_code == owner_status  # their own endpoints
                elif who == "other":
                    # Their own accounts, and their own time zone: theirs to see and set.
                    own = {
                        "/accounts": 200,
                        "/settings/time-zone": 204,
                        "/security": 200,
                        "/security/passkeys/no-such-key/remove": 403,
                    }
                    ok = r.status_code == own.get(path, 404)
                else:
                    ok = r.status_code in (303, 401) and (
                        r.status_code == 401 or r.headers["location"].startswith("/login")
                    )
                # (A redirect to the login page names the page asked for: that is the
                # caller's own input, not the owner's data.)
                if not ok or leaks(w, who, r.text):
                    seen.append((who, method, path, owner_status, r.status_code))
    assert seen == []
    await stack.settle_all()


async def test_the_websocket_matrix(stack: Stack) -> None:
    w = await world(stack)
    codes: dict[str, int | None] = {}
    for who in CALLERS:
        headers = await token_for(stack, w, who)
        url = ws_url(stack.base_url, w.owner.account, 0)
        async with connect(url, additional_headers=headers) as ws:
            if who == "owner":
                first = await recv(ws)
                assert first["account"] == w.owner.account
                codes[who] = None
            else:
                codes[who] = await close_code(ws)
    assert codes == {
        "anonymous": 4401,
        "wrong password": 4401,
        "expired": 4401,
        "revoked": 4401,
        "other": 4403,
        "owner": None,
    }
    # A signed-in browser session of another user, from the app's own origin: refused.
    async with browser(stack) as client:
        await login(client, w.other)
        cookie = f"settle_session={client.cookies.get('settle_session')}"
        origin = stack.base_url
        headers = {"Cookie": cookie, "Origin": origin}
        async with connect(
            ws_url(stack.base_url, w.owner.account, 0), additional_headers=headers
        ) as ws:
            assert await close_code(ws) == 4403
    await stack.settle_all()


def test_every_route_is_in_a_matrix() -> None:
    """A new route must be added to a matrix above (or here, if it is public)."""
    from server.settings import Settings
    from server.web.app import create_app

    public = {
        "/",
        "/login",
        "/logout",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/static",
        "/api/tokens",
        "/support",
    }
    covered = {
        "/api/accounts",
        "/api/accounts/{account_id}",
        "/api/accounts/{account_id}/transfers",
        "/api/accounts/{account_id}/statement",
        "/api/accounts/{account_id}/balance",
        "/api/accounts/{account_id}/events",
        "/api/transfers",
        "/api/transfers/preview",
        "/api/transfers/{transfer_id}",
        "/api/transfers/{transfer_id}/cancel",
        "/api/webhooks",
        "/api/webhooks/{webhook_id}",
        "/api/webhooks/{webhook_id}/deliveries",
        "/api/webhooks/{webhook_id}/test",
        "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        "/api/webhooks/{webhook_id}/rotate-secret",
        "/api/webhooks/{webhook_id}/enable",
        "/webhooks",
        "/webhooks/{webhook_id}/test",
        "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        "/webhooks/{webhook_id}/rotate-secret",
        "/webhooks/{webhook_id}/enable",
        "/webhooks/{webhook_id}/delete",
        "/api/transfers/{transfer_id}/confirmation",
        "/api/passkeys",
        "/api/passkeys/options",
        "/accounts",
        "/accounts/{account_id}",
        "/accounts/{account_id}/history",
        "/accounts/{account_id}/transfers",
        "/accounts/{account_id}/preview",
        "/accounts/{account_id}/sent",
        "/settings/time-zone",
        "/accounts/{account_id}/statement",
        "/accounts/{account_id}/statement.csv",
        "/transfers/{transfer_id}",
        "/transfers/{transfer_id}/cancel",
        "/transfers/{transfer_id}/confirm",
        "/security",
        "/security/passkeys/{passkey_id}/name",
        "/security/passkeys/{passkey_id}/remove",
        "/ws",
    }
    settings = Settings.from_env({"SECRET_KEY": "x", "REDIS_URL": "redis://127.0.0.1:1"})
    paths = {getattr(r, "path", "") for r in create_app(settings).routes}
    assert paths - public - covered == set()
