"""Passwords: scrypt from the standard library, hashed off the event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

from server.domain import errors

# scrypt cost: n=2**14, r=8 takes ~50 ms and 16 MiB per hash; tune up, never down.
# Each hash records its own parameters, so raising the cost keeps old hashes valid.
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024
# What unknown users and unusable hashes are checked against: the same work as a real
# check, and no password can match (the result is never compared).
_NO_SALT = b"settle:no-user:\x00"


def set_cost(n: int) -> None:
    """Change the scrypt cost of new hashes (tests lower it to create many users fast)."""
    global _N
    _N = n


def _bytes(password: str) -> bytes:
    return password.encode("utf-8", "surrogatepass")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    b64 = base64.b64encode
    key = hashlib.scrypt(_bytes(password), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def usable(stored: str) -> bool:
    """Whether a stored hash is one a password can match (the bank's "!" is not)."""
    parts = stored.split("$")
    return len(parts) == 6 and parts[0] == "scrypt"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``. It always costs one scrypt of the current
    cost, unusable hashes included, so that no wrong answer comes back faster than
    another: timing tells nothing about which usernames exist or can log in."""
    if not usable(stored):
        hashlib.scrypt(_bytes(password), salt=_NO_SALT, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
        return False
    _, n, r, p, salt, key = stored.split("$")
    expected = base64.b64decode(key)
    actual = hashlib.scrypt(
        _bytes(password),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=_MAXMEM,
        dklen=len(expected),
    )
    return hmac.compare_digest(actual, expected)


class Hasher:
    """scrypt off the event loop: at most ``workers`` hashes at a time (each takes a
    core for ~50 ms), and at most ``queue`` waiting; beyond that, 503 at once rather
    than an ever longer queue."""

    def __init__(self, workers: int = 2, queue: int = 64) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="settle-scrypt")
        self._limit = workers + queue
        self._busy = 0

    async def verify(self, password: str, stored: str) -> bool:
        if self._busy >= self._limit:
            raise errors.ServiceUnavailable("too many logins at once; retry in a moment")
        self._busy += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, verify_password, password, stored)
        finally:
            self._busy -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
