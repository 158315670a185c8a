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

import sqlalchemy as sa
from starlette.datastructures import FormData
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from server.domain import errors
from server.settings import Settings
from server.store import Store
from server.store.schema import now_us, sessions, users
from server.web import forms
from server.web.services import Services, services

COOKIE = "settle_session"
# Before login there is no session row: the login form is protected by a double-submit
# token (a random cookie that the form must echo).
LOGIN_CSRF_COOKIE = "settle_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
CSRF_MAX = 128  # tokens are 43 characters
SESSION_TTL_S = 7 * 24 * 3600

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclasses.dataclass(frozen=True)
class Session:
    """A live browser session: who it is and the token its forms must carry."""

    user_id: str
    username: str
    csrf_token: str
    # "session:<id hash>": what a stream opened with this session is ended by.
    credential: str = ""
    expires_at: int = 0  # microseconds since the epoch
    display_name: str = ""  # the name the user goes by
    time_zone: str = ""  # their IANA zone, "" until their browser said (UTC)


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


async def end(app: Services, token: str) -> None:
    """End the session this cookie value names (logout, or a new login replacing it):
    delete it, and end every stream opened with it, in every web process."""
    digest = _digest(app.settings, token)
    await app.store.transaction(
        lambda conn: conn.execute(sessions.delete().where(sessions.c.id_hash == digest))
    )
    await app.dispatch.credential_ended(f"session:{digest}")


_SESSION = (
    sa.select(
        users.c.id,
        users.c.username,
        users.c.display_name,
        users.c.time_zone,
        sessions.c.csrf_token,
        sessions.c.expires_at,
    )
    .join(sessions, sessions.c.user_id == users.c.id)
    .where(
        sessions.c.id_hash == sa.bindparam("digest"), sessions.c.expires_at > sa.bindparam("now")
    )
)


async def lookup(store: Store, settings: Settings, token: str) -> Session | None:
    if not token or len(token) > 128:
        return None
    digest = _digest(settings, token)
    row = await store.fetch_one(_SESSION, {"digest": digest, "now": now_us()})
    if row is None:
        return None
    return Session(
        str(row["id"]),
        str(row["username"]),
        str(row["csrf_token"]),
        f"session:{digest}",
        int(row["expires_at"]),
        str(row["display_name"]),
        str(row["time_zone"]),
    )


_LIVE_SESSION = sa.select(sessions.c.id_hash).where(
    sessions.c.id_hash == sa.bindparam("digest"), sessions.c.expires_at > sa.bindparam("now")
)


async def live(store: Store, digest: str) -> bool:
    """Whether the session with this id hash still exists and has not expired."""
    return await store.fetch_val(_LIVE_SESSION, {"digest": digest, "now": now_us()}) is not None


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


def check_csrf(request: Request, expected: str, form: FormData) -> None:
    """Raise CsrfFailed unless the form field or header carries ``expected`` (a field
    that is no text, a file, carries nothing: ``server.web.forms``)."""
    refused = errors.CsrfFailed("the form expired or came from another site; reload the page")
    try:
        given = forms.field(form, CSRF_FIELD, CSRF_MAX) or request.headers.get(CSRF_HEADER)
    except errors.InvalidField:
        raise refused from None
    if not same_origin(request) or not csrf_matches(expected, given):
        raise refused


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
