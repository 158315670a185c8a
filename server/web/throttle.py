"""The login throttle: how many passwords may be tried, by whom, how fast.

Designed as banks do, so that guessing is slow and a stranger cannot lock the owner out:

- Every attempt takes a slot *before* the password is checked, atomically, in Redis (one
  Lua script), so N simultaneous guesses get at most the free attempts' worth of
  checks, whichever web process they reach.
- Attempts are counted in buckets: the account (from devices it does not know), the
  account from one known device, and the client's address. A bucket allows ``FREE``
  attempts at once; after that each next one waits twice as long as the one before
  (1 s, 2 s, 4 s ... up to 15 minutes). A refused attempt is not counted.
- A browser that has logged in to an account before carries a signed device cookie for
  it; its attempts count in its own bucket, so strangers hammering the account do not
  lock out the owner's own device (which still gets its own progressive delay if it
  guesses). Sessions already signed in are never touched by any of this.
- A correct password empties the account's bucket for that device class and gives
  the address its attempt back.

A bucket is forgotten 15 minutes after its last attempt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets

from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from server.domain import errors
from server.settings import Settings

FREE_PER_ACCOUNT = 5
FREE_PER_DEVICE = 5
FREE_PER_ADDRESS = 30
FIRST_DELAY_MS = 1000
MAX_DELAY_MS = 15 * 60 * 1000
FORGET_AFTER_MS = 15 * 60 * 1000

DEVICE_COOKIE = "settle_device"
DEVICE_TTL_S = 365 * 24 * 3600

# KEYS: the buckets. ARGV: first delay, max delay, forget after (ms), then each bucket's
# free attempts. Returns 0 (go ahead: the attempt is counted) or the milliseconds to wait.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local next_at = tonumber(redis.call('HGET', key, 'next') or '0')
  if next_at - now > wait then wait = next_at - now end
end
if wait > 0 then return wait end
local first, most, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[3 + i])
  local n = redis.call('HINCRBY', key, 'n', 1)
  if n >= free then
    local delay = math.min(first * 2 ^ (n - free), most)
    redis.call('HSET', key, 'next', now + delay)
  end
  redis.call('PEXPIRE', key, forget)
end
return 0
"""
# KEYS[1]: the account's bucket (emptied); KEYS[2]: the address's (one attempt back).
_REFUND = """
redis.call('DEL', KEYS[1])
local n = redis.call('HINCRBY', KEYS[2], 'n', -1)
if n < tonumber(ARGV[1]) then redis.call('HDEL', KEYS[2], 'next') end
if n <= 0 then redis.call('DEL', KEYS[2]) end
return n
"""


@dataclasses.dataclass(frozen=True)
class Attempt:
    """A login attempt that was allowed to check its password."""

    account_key: str
    address_key: str


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode(errors="surrogatepass")).hexdigest()[:32]


def device_token(settings: Settings, username: str) -> str:
    """A new device cookie for a browser that just logged in as ``username``."""
    device = secrets.token_urlsafe(16)
    return f"{device}.{_mac(settings, device, username)}"


def _mac(settings: Settings, device: str, username: str) -> str:
    message = f"{device}:{username.lower()}".encode(errors="surrogatepass")
    return hmac.new(settings.secret_key.encode(), message, hashlib.sha256).hexdigest()[:32]


def known_device(conn: HTTPConnection, settings: Settings, username: str) -> str | None:
    """The device id of this browser if it has logged in as ``username`` before."""
    cookie = conn.cookies.get(DEVICE_COOKIE, "")
    device, _, mac = cookie.partition(".")
    if not device or len(cookie) > 128:
        return None
    if not hmac.compare_digest(mac.encode(), _mac(settings, device, username).encode()):
        return None
    return device


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else "unknown"


class Throttle:
    """The login throttle of one deployment (shared by its web processes via Redis)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.settings = settings
        self._take = redis.register_script(_TAKE)
        self._refund = redis.register_script(_REFUND)

    def _keys(self, conn: HTTPConnection, username: str) -> tuple[str, int]:
        prefix = self.settings.redis_prefix
        account = f"{prefix}:login:acct:{_digest(username.lower())}"
        device = known_device(conn, self.settings, username)
        if device is not None:
            return f"{account}:dev:{_digest(device)}", FREE_PER_DEVICE
        return account, FREE_PER_ACCOUNT

    async def attempt(self, conn: HTTPConnection, username: str) -> Attempt:
        """Take a slot to check a password, or RateLimited with how long to wait."""
        account, free = self._keys(conn, username)
        address = f"{self.settings.redis_prefix}:login:addr:{client_address(conn)}"
        wait_ms = await self._take(
            keys=[account, address],
            args=[FIRST_DELAY_MS, MAX_DELAY_MS, FORGET_AFTER_MS, free, FREE_PER_ADDRESS],
        )
        if int(wait_ms) > 0:
            raise errors.RateLimited(
                "too many failed attempts; try again later",
                retry_after=max(1, math.ceil(int(wait_ms) / 1000)),
            )
        return Attempt(account, address)

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the account's bucket is emptied, the address gets its
        attempt back."""
        await self._refund(keys=[attempt.account_key, attempt.address_key], args=[FREE_PER_ADDRESS])
