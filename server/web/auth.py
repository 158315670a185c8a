"""Who a request is from: API bearer tokens (stored hashed), the browser session, and
the check of a username and password (``server.web.passwords`` hashes)."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from starlette.requests import HTTPConnection

from server.domain import errors, people
from server.store import Store, findable
from server.store.schema import api_tokens, now_us, users
from server.web import passwords, sessions
from server.web.credentials import TokenCache, User
from server.web.services import Services, services


def token_digest(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no KDF needed).
    return hashlib.sha256(token.encode()).hexdigest()


# Usernames in any letter case: "BOB" logs in as bob.
_CREDENTIALS = sa.select(users.c.id, users.c.password_hash).where(
    users.c.username_lower == sa.bindparam("name")
)


async def check_credentials(
    store: Store, hasher: passwords.Hasher, username: str, password: str
) -> str:
    """Return the user id for a correct username and password, else raise Unauthorized.
    Every failure costs the same (an unknown user, the bank, a wrong password)."""
    name = people.username_key(findable(username))
    row = await store.fetch_one(_CREDENTIALS, {"name": name})
    stored = row["password_hash"] if row is not None else "-"
    if not await hasher.verify(password, stored) or row is None:
        raise errors.Unauthorized("wrong username or password")
    return str(row["id"])


async def issue_token(store: Store, user_id: str, ttl_s: int) -> str:
    token = "stl_" + secrets.token_urlsafe(32)
    at = now_us()
    row = {
        "token_hash": token_digest(token),
        "user_id": user_id,
        "created_at": at,
        "expires_at": at + ttl_s * 1_000_000,
    }
    await store.transaction(lambda conn: conn.execute(api_tokens.insert().values(**row)))
    return token


_TOKEN_USER = (
    sa.select(users.c.id, users.c.username, api_tokens.c.expires_at)
    .join(api_tokens, api_tokens.c.user_id == users.c.id)
    .where(
        api_tokens.c.token_hash == sa.bindparam("digest"),
        api_tokens.c.revoked_at.is_(None),
        api_tokens.c.expires_at > sa.bindparam("now"),
    )
)


async def user_for_token(store: Store, token: str, cache: TokenCache | None = None) -> User | None:
    """The user of a live token, or None."""
    digest = token_digest(token)
    user = cache.get(digest) if cache is not None else None
    if user is not None:
        return user
    row = await store.fetch_one(_TOKEN_USER, {"digest": digest, "now": now_us()})
    if row is None:
        return None
    user = User(
        str(row["id"]),
        str(row["username"]),
        via="bearer",
        credential=f"token:{digest}",
        expires_at=int(row["expires_at"]),
    )
    if cache is not None:
        cache.put(digest, user)
    return user


_LIVE_TOKEN = sa.select(api_tokens.c.token_hash).where(
    api_tokens.c.token_hash == sa.bindparam("digest"),
    api_tokens.c.revoked_at.is_(None),
    api_tokens.c.expires_at > sa.bindparam("now"),
)


async def credential_live(store: Store, credential: str) -> bool:
    """Whether a credential (``User.credential``) is still good: the token neither
    revoked nor expired, the session neither ended nor expired."""
    kind, _, digest = credential.partition(":")
    if kind == "token":
        found = await store.fetch_val(_LIVE_TOKEN, {"digest": digest, "now": now_us()})
        return found is not None
    if kind == "session":
        return await sessions.live(store, digest)
    return False


async def revoke_token(app: Services, token: str) -> None:
    """Revoke a token, and end every stream opened with it, in every web process."""
    digest = token_digest(token)
    revoke = (
        api_tokens.update().where(api_tokens.c.token_hash == digest).values(revoked_at=now_us())
    )
    await app.store.transaction(lambda conn: conn.execute(revoke))
    app.tokens.forget(f"token:{digest}")
    await app.dispatch.credential_ended(f"token:{digest}")


def bearer_token(conn: HTTPConnection) -> str | None:
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(conn: HTTPConnection) -> User | None:
    """The user behind an HTTP request or WebSocket: bearer token first, then the
    browser session cookie. None if neither is present and valid."""
    token = bearer_token(conn)
    if token is not None:
        app = services(conn)
        return await user_for_token(app.store, token, app.tokens)
    session = await sessions.current(conn)
    if session is None:
        return None
    # A browser attaches the cookie to cross-site requests too: a state-changing HTTP
    # request must also prove it came from our own page (the session's CSRF token).
    # WebSockets check the Origin header instead (server.web.ws).
    if conn.scope["type"] == "http" and conn.scope["method"] not in sessions.SAFE_METHODS:
        given = conn.headers.get(sessions.CSRF_HEADER)
        if not sessions.same_origin(conn) or not sessions.csrf_matches(session.csrf_token, given):
            return None
    return User(
        session.user_id,
        session.username,
        via="session",
        credential=session.credential,
        expires_at=session.expires_at,
    )
