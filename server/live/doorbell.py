"""Each settlement partition's doorbell and lease, in Redis: how a commit wakes the one
drainer of its partition, or starts one when there is none, without ever losing a wake.

- ``{prefix}:bell:<p>``: a list holding one item while the partition has news (a ring).
  A drainer waits on it with BLPOP, so a ring wakes it at once; claiming the lease
  clears it (the new drainer's first batch answers the rings that came before).
- ``{prefix}:lease:<p>``: who drains the partition: ``starting:<token>`` from the moment
  a drainer job is queued until it runs, then ``<token>``; it expires unless renewed, so
  a drainer killed with its worker loses it within seconds.

Ringing and letting go are each one script, so they cannot interleave: a ring either
sees the lease (and the drainer that holds it will find the ring before it lets go) or
finds none and says so, and the ringer queues a new drainer (``Ring.start``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import Any, cast

from arq.connections import ArqRedis

from server.settings import Settings

# A drainer's lease lasts this long unless renewed (it renews every LEASE_MS / 3): the
# longest a partition stays without a drainer after its worker died.
LEASE_MS = 3000
# A queued drainer job holds the lease as "starting" for this long: time for a worker
# to pick it up (a poll away) even when busy.
STARTING_MS = 10_000

# KEYS: bell, lease. ARGV: a new token, STARTING_MS. The token if a drainer is to start.
_RING = """
redis.call('rpush', KEYS[1], '1')
redis.call('ltrim', KEYS[1], -1, -1)
if redis.call('exists', KEYS[2]) == 1 then return false end
redis.call('set', KEYS[2], 'starting:' .. ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
# KEYS: bell, lease. ARGV: token, LEASE_MS. 1 if this drainer now holds the lease. The
# rings that came before are answered by its first batch (it starts right after, and sees
# every commit they followed): cleared, so that they neither wake it for nothing nor, if
# its worker stops before its first wait, look like news it must hand over.
_CLAIM = """
local held = redis.call('get', KEYS[2])
if held == 'starting:' .. ARGV[1] or held == false then
  redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('del', KEYS[1])
  return 1
end
return 0
"""
# KEYS: lease. ARGV: token, LEASE_MS. 1 if still ours (renewed), or ours again: it
# lapsed (a transaction slower than the lease) and nobody took it. A ring that came while
# it was held is then still this drainer's to answer.
_RENEW = """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if held == false then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: bell, lease. ARGV: token. 1: let go (or it was not ours); 0: rung meanwhile, stay.
_LET_GO = """
if redis.call('get', KEYS[2]) ~= ARGV[1] then return 1 end
if redis.call('llen', KEYS[1]) > 0 then return 0 end
redis.call('del', KEYS[2])
return 1
"""
# KEYS: lease. ARGV: token, the successor's token, STARTING_MS. 1 if handed over.
_HAND_OVER = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], 'starting:' .. ARGV[2], 'PX', ARGV[3])
return 1
"""


def new_token() -> str:
    return secrets.token_hex(8)


class Doorbells:
    """The doorbells and leases of a deployment's partitions."""

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.prefix = settings.redis_prefix
        self._ring = redis.register_script(_RING)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._let_go = redis.register_script(_LET_GO)
        self._hand_over = redis.register_script(_HAND_OVER)

    def bell(self, partition: int) -> str:
        return f"{self.prefix}:bell:{partition}"

    def lease(self, partition: int) -> str:
        return f"{self.prefix}:lease:{partition}"

    def ring_args(self, partition: int) -> tuple[str, list[str], list[Any]]:
        """The ring of ``partition`` as an EVALSHA's sha, keys and arguments (for a
        pipeline that also publishes: one round trip for both)."""
        keys = [self.bell(partition), self.lease(partition)]
        return self._ring.sha, keys, [new_token(), STARTING_MS]

    @property
    def ring_script(self) -> str:
        return _RING

    async def claim(self, partition: int, token: str) -> bool:
        keys = [self.bell(partition), self.lease(partition)]
        found = await self._claim(keys=keys, args=[token, LEASE_MS])
        return bool(found)

    async def renew(self, partition: int, token: str) -> bool:
        found = await self._renew(keys=[self.lease(partition)], args=[token, LEASE_MS])
        return bool(found)

    async def wait(self, partition: int, timeout_s: float) -> bool:
        """Until the partition is rung (True) or ``timeout_s`` passed (False)."""
        # BLPOP takes fractions of a second (Redis 6+), which redis-py's types do not say.
        timeout: Any = max(timeout_s, 0.001)
        got = await cast(Awaitable[Any], self.redis.blpop([self.bell(partition)], timeout))
        return got is not None

    async def let_go(self, partition: int, token: str) -> bool:
        """Give the partition up unless it was rung meanwhile (then False: drain on)."""
        keys = [self.bell(partition), self.lease(partition)]
        return bool(await self._let_go(keys=keys, args=[token]))

    async def hand_over(self, partition: int, token: str, successor: str) -> bool:
        keys = [self.lease(partition)]
        return bool(await self._hand_over(keys=keys, args=[token, successor, STARTING_MS]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
