"""Who a request is from (``User``), and the web process's short memory of live tokens
(``TokenCache``): what ``server.web.auth`` decides, and the lifespan state keeps."""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

from server.domain.clock import now_us


@dataclasses.dataclass(frozen=True)
class User:
    """Who a request or WebSocket is from, and how it proved it."""

    id: str
    username: str
    # "session" (browser cookie) connections are subject to CSRF and Origin checks;
    # "bearer" ones are not (a browser never attaches a bearer token on its own).
    via: Literal["bearer", "session"] = "bearer"
    # What ends it ("token:<digest>", "session:<digest>"), and when it expires
    # (microseconds since the epoch): a stream opened with it ends with it.
    credential: str = ""
    expires_at: int = 0


# How long a web process trusts what it last read of a live token. Ending a token
# forgets it at once in the process that ended it and, through the announcement every
# hub receives (``Hub.end_credential``), in every other; this only bounds how long a
# missed announcement (Redis down) can keep an ended token working there.
TOKEN_CACHE_S = 1.0
TOKEN_CACHE_SIZE = 10_000


class TokenCache:
    """The users of recently seen live tokens, by digest: under load, most requests
    skip the database read (a thread hop) that authenticates them."""

    def __init__(self) -> None:
        self._users: dict[str, tuple[float, User]] = {}

    def get(self, digest: str) -> User | None:
        hit = self._users.get(digest)
        if hit is None:
            return None
        seen, user = hit
        if time.monotonic() - seen > TOKEN_CACHE_S or user.expires_at <= now_us():
            self._users.pop(digest, None)
            return None
        return user

    def put(self, digest: str, user: User) -> None:
        if len(self._users) >= TOKEN_CACHE_SIZE:
            self._users.pop(next(iter(self._users)))  # the oldest
        self._users[digest] = (time.monotonic(), user)

    def forget(self, credential: str) -> None:
        """A credential ("token:<digest>", …) ended."""
        kind, _, digest = credential.partition(":")
        if kind == "token":
            self._users.pop(digest, None)
