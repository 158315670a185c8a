"""Passwords (scrypt, from the standard library) and API bearer tokens (stored hashed)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
from typing import Literal

import sqlalchemy as sa
from starlette.requests import HTTPConnection

from server import errors, sessions
from server.schema import api_tokens, now_us, users
from server.services import services
from server.store import Store, findable

# scrypt cost: n=2**14, r=8 takes ~50 ms and 16 MiB per hash; tune up, never down.
# Each hash records its own parameters, so raising the cost keeps old hashes valid.
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def set_cost(n: int) -> None:
    """Change the scrypt cost of new hashes (tests lower it to create many users fast)."""
    global _N
    _N = n


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    b64 = base64.b64encode
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(key)
    actual = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=_MAXMEM,
        dklen=len(expected),
    )
    return hmac.compare_digest(actual, expected)


# Spent on unknown usernames too, so response time does not tell which usernames exist.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def token_digest(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no KDF needed).
    return hashlib.sha256(token.encode()).hexdigest()


_CREDENTIALS = sa.select(users.c.id, users.c.password_hash).where(
    users.c.username == sa.bindparam("name")
)


async def check_credentials(store: Store, username: str, password: str) -> str:
    """Return the user id for a correct username and password, else raise Unauthorized."""
    row = await store.fetch_one(_CREDENTIALS, {"name": findable(username)})
    stored = row["password_hash"] if row is not None else _DUMMY_HASH
    if not verify_password(password, stored) or row is None:
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
    sa.select(users.c.id, users.c.username)
    .join(api_tokens, api_tokens.c.user_id == users.c.id)
    .where(
        api_tokens.c.token_hash == sa.bindparam("digest"),
        api_tokens.c.revoked_at.is_(None),
        api_tokens.c.expires_at > sa.bindparam("now"),
    )
)


async def user_for_token(store: Store, token: str) -> tuple[str, str] | None:
    """(user id, username) for a live token, or None."""
    row = await store.fetch_one(_TOKEN_USER, {"digest": token_digest(token), "now": now_us()})
    if row is None:
        return None
    return str(row["id"]), str(row["username"])


async def revoke_token(store: Store, token: str) -> None:
    revoke = (
        api_tokens.update()
        .where(api_tokens.c.token_hash == token_digest(token))
        .values(revoked_at=now_us())
    )
    await store.transaction(lambda conn: conn.execute(revoke))


@dataclasses.dataclass(frozen=True)
class User:
    """Who a request or WebSocket is from, and how it proved it."""

    id: str
    username: str
    # "session" (browser cookie) connections are subject to CSRF and Origin checks;
    # "bearer" ones are not (a browser never attaches a bearer token on its own).
    via: Literal["bearer", "session"] = "bearer"


def bearer_token(conn: HTTPConnection) -> str | None:
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(conn: HTTPConnection) -> User | None:
    """The user behind an HTTP request or WebSocket: bearer token first, then the
    browser session cookie. None if neither is present and valid."""
    store = services(conn).store
    token = bearer_token(conn)
    if token is not None:
        found = await user_for_token(store, token)
        return None if found is None else User(*found, via="bearer")
    session = await sessions.current(conn)
    if session is None:
        return None
    # A browser attaches the cookie to cross-site requests too: a state-changing HTTP
    # request must also prove it came from our own page (the session's CSRF token).
    # WebSockets check the Origin header instead (server.ws).
    if conn.scope["type"] == "http" and conn.scope["method"] not in sessions.SAFE_METHODS:
        given = conn.headers.get(sessions.CSRF_HEADER)
        if not sessions.same_origin(conn) or not sessions.csrf_matches(session.csrf_token, given):
            return None
    return User(session.user_id, session.username, via="session")
