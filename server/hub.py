"""The in-process fan-out of committed account events to WebSocket subscribers.

Each web process holds ONE Redis pub/sub connection (``PSUBSCRIBE {prefix}:events:*``)
and hands every event to the subscriptions of its account without awaiting them: each
subscription has a bounded queue, and one that overflows is marked for closing (1013)
instead of slowing the publisher or its neighbours.

Pub/sub is at-most-once, and the database log (``account_events``) is the truth, so
each subscription delivers in ``seq`` order, exactly once, by catching up from the log
whenever it sees a gap, after every Redis reconnect, and on every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server import events, metrics, reads
from server.dispatch import ended_channel
from server.settings import Settings
from server.store import Store

log = logging.getLogger("settle.hub")


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One message for a socket, already serialized: fan-out encodes it once for all."""

    seq: int
    text: str
    is_event: bool = True


# Put in a subscription's queue after a Redis reconnect: "events may have been lost".
RESYNC = Outgoing(seq=-1, text="", is_event=False)
# Put in a subscription's queue when its socket must close (``Subscription.close_code``).
STOP = Outgoing(seq=-2, text="", is_event=False)
# Rendered HTML ``content`` kept for this many recent events: live fan-out and the
# replays of sockets resuming at once all reuse one rendering.
CONTENT_CACHE = 2048

# The htmx pages' fragments for one message (``server.fragments.content_renderer``).
RenderContent = Callable[[dict[str, Any]], str]
# Whether a credential ("token:<digest>", "session:<digest>") is still good.
CredentialLive = Callable[[str], Awaitable[bool]]


class Subscription:
    """One socket's view of one account: a bounded inbox plus the last seq it was sent.

    Ten thousand of these may sit idle in a process, so the inbox is a plain list and
    one future to wake its reader, not an ``asyncio.Queue`` (three deques each)."""

    __slots__ = (
        "_inbox",
        "_waiter",
        "account_id",
        "close_code",
        "credential",
        "fragments",
        "hub",
        "last_seq",
        "owner",
        "size",
    )

    def __init__(
        self,
        hub: Hub,
        account_id: str,
        owner: str,
        since: int,
        size: int,
        fragments: bool = False,
        credential: str = "",
    ) -> None:
        self.hub = hub
        self.account_id = account_id
        self.owner = owner
        self.last_seq = since
        # What the socket was opened with (when it ends, the socket closes with 4401).
        self.credential = credential
        # htmx pages: every message also carries its HTML ``content``.
        self.fragments = fragments
        # Bounded by ``offer`` rather than by the queue, so that STOP always fits.
        self.size = size
        # Why the socket must close, once it must: 1013 when the inbox overflows, 4401
        # when the credential ends. The socket's sender learns it from STOP.
        self.close_code = 0
        self._inbox: list[Outgoing] = []
        self._waiter: asyncio.Future[None] | None = None

    def stop(self, code: int) -> None:
        if not self.close_code:
            self.close_code = code
            self._put(STOP)

    def offer(self, item: Outgoing) -> None:
        """Queue without waiting (called from the fan-out loop, never blocks)."""
        if self.close_code:
            return
        if len(self._inbox) >= self.size:
            self.stop(1013)
            self.hub.unsubscribe(self)
            return
        self._put(item)

    def _put(self, item: Outgoing) -> None:
        self._inbox.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> list[Outgoing]:
        """Wait for what arrives next; return what to send now, in seq order."""
        while not self._inbox:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._inbox = self._inbox, []
        out: list[Outgoing] = []
        for item in items:
            out += await self.deliver(item)
            if out and out[-1] is STOP:
                break
        return out

    async def deliver(self, item: Outgoing) -> list[Outgoing]:
        """Turn one queued item into the messages to send: drop what was already sent,
        fill a gap from the log first, resync from the log after a reconnect; STOP is
        passed on as it is."""
        if item is STOP:
            return [STOP]
        if item is RESYNC or item.seq > self.last_seq + 1:
            return await self.catch_up()
        if item.seq <= self.last_seq:
            return []
        self.last_seq = item.seq
        return [item]

    async def catch_up(self) -> list[Outgoing]:
        """Every logged event after ``last_seq``, or one snapshot if there are too many
        (or if the client claims a seq the account never reached)."""
        cap = self.hub.settings.replay_cap
        backlog = await reads.backlog(self.hub.store, self.account_id, self.last_seq, cap)
        row = backlog.account
        if row is None or row["seq"] == self.last_seq:
            return []
        if row["seq"] - self.last_seq > cap or row["seq"] < self.last_seq:
            self.last_seq = row["seq"]
            return [Outgoing(row["seq"], events.snapshot(row, self.owner).decode(), False)]
        out = [Outgoing(r["seq"], r["payload"]) for r in backlog.events]
        if out:
            self.last_seq = out[-1].seq
        return out

    def encode(self, item: Outgoing) -> str:
        """The text this socket is sent for ``item``."""
        return self.hub.with_content(self.account_id, item) if self.fragments else item.text


class Hub:
    """The process's one Redis subscription and the sockets' subscriptions, by account."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        lag: Histogram | None = None,
        render: RenderContent | None = None,
        credential_live: CredentialLive | None = None,
    ) -> None:
        assert settings.redis_url is not None
        self.lag = lag
        self.render = render
        self.credential_live = credential_live
        self._by_credential: dict[str, set[Subscription]] = {}
        # Told of every ended credential (the web process's token cache forgets it).
        self.on_ended: list[Callable[[str], None]] = []
        self._ended_channel = ended_channel(settings)
        self._rechecks: set[asyncio.Task[None]] = set()
        self._content: OrderedDict[tuple[str, int], str] = OrderedDict()
        self.settings = settings
        self.store = store
        self.queue_size = settings.ws_queue_size
        self._subs: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._pattern = f"{settings.redis_prefix}:events:*"
        self._prefix_len = len(self._pattern) - 1

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; wait (a bounded time) for the first subscription, so events
        published once the app serves are not missed. Redis down: keep trying behind."""
        self._task = asyncio.create_task(self._run(), name="settle-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait_s)

    async def stop(self) -> None:
        for task in [self._task, *self._rechecks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None

    def subscribe(
        self,
        account_id: str,
        owner: str,
        since: int,
        fragments: bool = False,
        credential: str = "",
    ) -> Subscription:
        """Register before replaying, so no live event falls between replay and live."""
        sub = Subscription(self, account_id, owner, since, self.queue_size, fragments, credential)
        self._subs.setdefault(account_id, set()).add(sub)
        if credential:
            self._by_credential.setdefault(credential, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        for index, key in ((self._subs, sub.account_id), (self._by_credential, sub.credential)):
            subs = index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del index[key]

    def end_credential(self, credential: str) -> None:
        """Every stream opened with ``credential`` ends (its socket closes with 4401)."""
        for listener in self.on_ended:
            listener(credential)
        for sub in list(self._by_credential.get(credential, ())):
            sub.stop(4401)

    async def _recheck_credentials(self) -> None:
        """After a reconnect, announcements of ended credentials may have been missed:
        ask the database about each credential that has a stream open here."""
        if self.credential_live is None:
            return
        for credential in list(self._by_credential):
            try:
                live = await self.credential_live(credential)
            except Exception as exc:
                log.warning("credential recheck failed, retried on reconnect: %r", exc)
                return
            if not live:
                self.end_credential(credential)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def with_content(self, account_id: str, item: Outgoing) -> str:
        """``item`` with its HTML ``content`` added: rendered once per event, whatever
        the number of sockets (live or replaying) that send it."""
        if self.render is None or not item.is_event:
            return item.text  # a snapshot: the page reloads its history instead
        key = (account_id, item.seq)
        text = self._content.get(key)
        if text is None:
            message = events.decode(item.text)
            if message is None:
                return item.text
            message["content"] = self.render(message)
            text = self._content[key] = orjson.dumps(message).decode()
            if len(self._content) > CONTENT_CACHE:
                self._content.popitem(last=False)
        return text

    def fan_out(self, account_id: str, data: bytes) -> None:
        """Hand one published event to every subscription of its account, at once."""
        subs = self._subs.get(account_id)
        if not subs:
            return
        message = events.decode(data)
        if message is None:
            log.warning("ignoring a malformed event on %s", account_id)
            return
        if self.lag is not None and (age := metrics.event_age_s(message)) is not None:
            self.lag.observe(max(age, 0.0))
        item = Outgoing(message["seq"], data.decode())
        for sub in list(subs):
            sub.offer(item)

    def _resync_all(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.offer(RESYNC)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            client = Redis.from_url(self.settings.redis_url or "")
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(self._pattern)
                await pubsub.subscribe(self._ended_channel)
                # The subscription is confirmed before the resync reads the log, so an
                # event is either in what the resync reads or arrives live (or both).
                async for msg in pubsub.listen():
                    if msg["type"] == "psubscribe":
                        self.connected.set()
                        self._resync_all()
                        delay = 0.05
                    elif msg["type"] == "pmessage":
                        channel = msg["channel"].decode()
                        self.fan_out(channel[self._prefix_len :], msg["data"])
                    elif msg["type"] == "message":
                        self.end_credential(msg["data"].decode(errors="replace"))
                    elif msg["type"] == "subscribe":
                        recheck = asyncio.create_task(self._recheck_credentials())
                        self._rechecks.add(recheck)
                        recheck.add_done_callback(self._rechecks.discard)
                raise ConnectionError("pub/sub connection ended")
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("redis pub/sub lost, reconnecting: %r", exc)
                self.connected.clear()
            except Exception:
                # A bug here must not silently end live delivery for the whole process.
                log.exception("hub failed, restarting it")
                self.connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            # Exponential backoff with jitter: every web process reconnects, not at once.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
