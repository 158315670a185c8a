"""Browser sessions, CSRF tokens and the login rate limit.

The cookie holds 256 random bits; the database keeps only their HMAC (keyed with
``settings.secret_key``), so neither a leaked table nor a leaked key alone yields a
usable session. Each session row carries its own CSRF token, which every
state-changing form and htmx request sends back. Logging in always creates a new
session (rotation) and deletes the one the browser came with; logging out deletes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from typing import Any

import sqlalchemy as sa
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from server import errors
from server.schema import now_us, sessions, users
from server.services import services
from server.settings import Settings
from server.store import Store

COOKIE = "settle_session"
# Before login there is no session row: the login form is protected by a double-submit
# token (a random cookie that the form must echo).
LOGIN_CSRF_COOKIE = "settle_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 7 * 24 * 3600

# Login attempts: after this many failures for one username (or from one address)
# within the window, further attempts are refused with 429 until the window passes.
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 30
FAILURE_WINDOW_S = 300

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclasses.dataclass(frozen=True)
class Session:
    """A live browser session: who it is and the token its forms must carry."""

    user_id: str
    username: str
    csrf_token: str


def _digest(settings: Settings, token: str) -> str:
    return hmac.new(settings.secret_key.encode(), token.encode(), hashlib.sha256).hexdigest()


async def create(store: Store, settings: Settings, user_id: str) -> tuple[str, str]:
    """A new session for ``user_id``: (cookie value, csrf token)."""
    token, csrf, at = secrets.token_urlsafe(32), secrets.token_urlsafe(32), now_us()
    row = {
        "id_hash": _digest(settings, token),
        "user_id": user_id,
        "csrf_token": csrf,
        "created_at": at,
        "expires_at": at + SESSION_TTL_S * 1_000_000,
    }
    await store.transaction(lambda conn: conn.execute(sessions.insert().values(**row)))
    return token, csrf


async def delete(store: Store, settings: Settings, token: str) -> None:
    digest = _digest(settings, token)
    await store.transaction(
        lambda conn: conn.execute(sessions.delete().where(sessions.c.id_hash == digest))
    )


_SESSION = (
    sa.select(users.c.id, users.c.username, sessions.c.csrf_token)
    .join(sessions, sessions.c.user_id == users.c.id)
    .where(
        sessions.c.id_hash == sa.bindparam("digest"), sessions.c.expires_at > sa.bindparam("now")
    )
)


async def lookup(store: Store, settings: Settings, token: str) -> Session | None:
    if not token or len(token) > 128:
        return None
    row = await store.fetch_one(_SESSION, {"digest": _digest(settings, token), "now": now_us()})
    if row is None:
        return None
    return Session(str(row["id"]), str(row["username"]), str(row["csrf_token"]))


async def current(conn: HTTPConnection) -> Session | None:
    """The session a request or WebSocket carries in its cookie, if it is live."""
    token = conn.cookies.get(COOKIE)
    if token is None:
        return None
    app = services(conn)
    return await lookup(app.store, app.settings, token)


async def require(request: Request) -> Session:
    """The request's session, or Unauthorized (pages answer that with the login page)."""
    session = await current(request)
    if session is None:
        raise errors.Unauthorized("please log in")
    return session


def csrf_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def same_origin(conn: HTTPConnection) -> bool:
    """False if the browser says the request came from another site (Origin header)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    host = conn.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def check_csrf(request: Request, expected: str, form: Any) -> None:
    """Raise CsrfFailed unless the form field or header carries ``expected``."""
    given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not same_origin(request) or not csrf_matches(expected, given):
        raise errors.CsrfFailed("the form expired or came from another site; reload the page")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        # Behind HTTPS (uvicorn trusts X-Forwarded-Proto from its proxy), never send it
        # over plain HTTP.
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax")


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _limit_keys(settings: Settings, request: Request, username: str) -> list[tuple[str, int]]:
    user_key = hashlib.sha256(username.lower().encode()).hexdigest()[:32]
    return [
        (f"{settings.redis_prefix}:login:user:{user_key}", MAX_FAILURES_PER_USER),
        (f"{settings.redis_prefix}:login:addr:{client_address(request)}", MAX_FAILURES_PER_ADDRESS),
    ]


async def check_rate_limit(request: Request, username: str) -> None:
    """Raise RateLimited if this username or address failed to log in too often.

    Counted in Redis, so every web process shares the same limit."""
    app = services(request)
    for key, limit in _limit_keys(app.settings, request, username):
        failures = await app.redis.get(key)
        if failures is not None and int(failures) >= limit:
            ttl = await app.redis.ttl(key)
            raise errors.RateLimited(
                "too many failed logins; wait a few minutes and try again",
                retry_after=max(int(ttl), 1),
            )


async def record_failure(request: Request, username: str) -> None:
    app = services(request)
    for key, _ in _limit_keys(app.settings, request, username):
        # The window starts at the first failure (EXPIRE NX needs Redis 7; we run 6.2).
        if await app.redis.incr(key) == 1 or await app.redis.ttl(key) < 0:
            await app.redis.expire(key, FAILURE_WINDOW_S)


async def clear_failures(request: Request, username: str) -> None:
    app = services(request)
    key, _ = _limit_keys(app.settings, request, username)[0]
    await app.redis.delete(key)
