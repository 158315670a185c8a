"""The in-process fan-out of committed account events to WebSocket subscribers.

Each web process holds ONE Redis pub/sub connection, SUBSCRIBEd to the channel of each
account it has sockets for (``{prefix}:events:<account>``; UNSUBSCRIBEd when the last
goes), so Redis sends a process only the events it has subscribers for. Each event is
handed to the subscriptions of its account without awaiting them: each subscription has
a bounded queue, and one that overflows is marked for closing (1013) instead of slowing
the publisher or its neighbours.

Pub/sub is at-most-once, and the database log (``account_events``) is the truth, so
each subscription delivers in ``seq`` order, exactly once, by catching up from the log
whenever it sees a gap, after every Redis reconnect, and on every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from server import metrics
from server.domain import events
from server.domain.events import Event
from server.live.dispatch import channel, ended_channel
from server.live.inbox import RESYNC, STOP, Inbox, Outgoing
from server.settings import Settings
from server.store import Store, reads

log = logging.getLogger("settle.hub")


# Rendered HTML ``content`` kept for this many recent events: live fan-out and the
# replays of sockets resuming at once all reuse one rendering.
CONTENT_CACHE = 2048
# A new account's SUBSCRIBE confirmed, or a socket's first replay goes ahead anyway (a
# lost connection's resync, a gap or the heartbeat then fill what it misses).
SUBSCRIBE_WAIT_S = 5.0
# Channels per SUBSCRIBE / UNSUBSCRIBE command.
CHANNELS_PER_COMMAND = 1000

# The htmx pages' fragments for one event (``server.web.fragments.content_renderer``).
RenderContent = Callable[[Event], str]
# Whether a credential ("token:<digest>", "session:<digest>") is still good.
CredentialLive = Callable[[str], Awaitable[bool]]


class Subscription:
    """One socket's view of one account: a bounded inbox plus the last seq it was sent."""

    __slots__ = (
        "account_id",
        "close_code",
        "credential",
        "fragments",
        "hub",
        "last_seq",
        "owner",
        "queue",
        "subscribed",
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
        self.queue = Inbox(size)
        # Set once Redis confirmed the subscription to the account's channel (shared by
        # the account's subscriptions in this process).
        self.subscribed = hub.account_subscribed(account_id)
        # Why the socket must close, once it must: 1013 when the inbox overflows, 4401
        # when the credential ends. The socket's sender learns it from STOP.
        self.close_code = 0

    def stop(self, code: int) -> None:
        if not self.close_code:
            self.close_code = code
            self.queue.put_nowait(STOP, bounded=False)

    def offer(self, item: Outgoing) -> None:
        """Queue without waiting (called from the fan-out loop, never blocks)."""
        if self.close_code:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stop(1013)
            self.hub.unsubscribe(self)

    async def start(self) -> list[Outgoing]:
        """The first messages: the log after ``since``, read once the account's channel
        is subscribed, so that every later event is in that read or arrives live."""
        await self.hub.wait_subscribed(self)
        return await self.catch_up()

    async def deliver_all(self, items: list[Outgoing]) -> list[Outgoing]:
        """``deliver`` each of ``items``, up to a STOP."""
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
        account = backlog.account
        if account is None or account.seq == self.last_seq:
            return []
        if account.seq - self.last_seq > cap or account.seq < self.last_seq:
            self.last_seq = account.seq
            return [Outgoing(account.seq, events.snapshot(account).decode(), False)]
        out = [Outgoing(r["seq"], r["payload"]) for r in backlog.events]
        if out:
            self.last_seq = out[-1].seq
        return out

    def encode(self, item: Outgoing) -> str:
        """The text this socket is sent for ``item``."""
        return self.hub.with_content(self.account_id, item) if self.fragments else item.text


class Hub:
    """The process's one Redis pub/sub connection and the sockets' subscriptions, by
    account: a channel is subscribed while the account has a subscription here."""

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
        # Set once the current connection's subscriptions are confirmed.
        self.connected = asyncio.Event()
        self._prefix_len = len(channel(settings, ""))
        # The pub/sub connection (None between connections), the accounts whose
        # channels were SUBSCRIBEd on it, and their confirmations still to come.
        self._pubsub: PubSub | None = None
        self._sent: set[str] = set()
        self._unconfirmed: dict[str, int] = {}
        # Per account with subscriptions here: set when its channel is confirmed.
        self._confirmed: dict[str, asyncio.Event] = {}
        # Accounts whose subscriptions may have missed events (subscribed while the
        # connection was down): resynced from the log once their channel is confirmed.
        self._resync: set[str] = set()
        # Accounts whose subscription to Redis may have to change, and who changes it.
        self._dirty: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._pongs: dict[bytes, asyncio.Future[None]] = {}
        self.client_name = f"{settings.redis_prefix}:hub:{os.getpid()}"

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; wait (a bounded time) for the first subscription, so events
        published once the app serves are not missed. Redis down: keep trying behind."""
        self._task = asyncio.create_task(self._run(), name="settle-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait_s)

    async def stop(self) -> None:
        for task in [self._task, self._flusher, *self._rechecks]:
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
        first = account_id not in self._subs
        if first:
            self._subs[account_id] = set()
            self._confirmed[account_id] = asyncio.Event()
            if not self.connected.is_set():
                self._resync.add(account_id)
            self._changed(account_id)
        sub = Subscription(self, account_id, owner, since, self.queue_size, fragments, credential)
        self._subs[account_id].add(sub)
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
        if sub.account_id not in self._subs and sub.account_id in self._confirmed:
            del self._confirmed[sub.account_id]
            self._resync.discard(sub.account_id)
            self._changed(sub.account_id)

    def account_subscribed(self, account_id: str) -> asyncio.Event:
        return self._confirmed[account_id]

    async def wait_subscribed(self, sub: Subscription) -> None:
        """Until Redis confirmed the channel of ``sub``'s account. Not while the
        connection is down: the account is then resynced once it is back."""
        if sub.subscribed.is_set() or not self.connected.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_WAIT_S):
                await sub.subscribed.wait()

    @property
    def channels(self) -> set[str]:
        """The accounts whose channels are subscribed (or being subscribed) on Redis."""
        return set(self._sent)

    async def sync(self) -> None:
        """Until Redis has processed every (un)subscription asked for so far (a PING on
        the pub/sub connection: its reply follows theirs). Raises ConnectionError when
        the connection is down."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        pubsub = self._pubsub
        if pubsub is None:
            raise ConnectionError("no pub/sub connection")
        token = os.urandom(8).hex().encode()
        pong = self._pongs[token] = asyncio.get_running_loop().create_future()
        try:
            await pubsub.ping(token)
            await pong
        finally:
            self._pongs.pop(token, None)

    def _changed(self, account_id: str) -> None:
        self._dirty.add(account_id)
        if self._pubsub is not None and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush(), name="settle-hub-subscribe")

    async def _flush(self) -> None:
        """Bring the connection's channels in line with the accounts that have
        subscriptions here: what changes meanwhile goes in the next commands."""
        async with self._flushing:
            while self._dirty and (pubsub := self._pubsub) is not None:
                dirty, self._dirty = self._dirty, set()
                drop = [a for a in dirty if a not in self._subs and a in self._sent]
                add = [a for a in dirty if a in self._subs and a not in self._sent]
                self._sent.difference_update(drop)
                self._sent.update(add)
                for account in add:
                    self._unconfirmed[account] = self._unconfirmed.get(account, 0) + 1
                try:
                    for i in range(0, len(drop), CHANNELS_PER_COMMAND):
                        chunk = drop[i : i + CHANNELS_PER_COMMAND]
                        await pubsub.unsubscribe(*(channel(self.settings, a) for a in chunk))
                    for i in range(0, len(add), CHANNELS_PER_COMMAND):
                        chunk = add[i : i + CHANNELS_PER_COMMAND]
                        await pubsub.subscribe(*(channel(self.settings, a) for a in chunk))
                except (RedisError, OSError) as exc:
                    # The listener sees the connection fail too; the next one subscribes
                    # to every account that has subscriptions then.
                    log.warning("redis (un)subscribe failed, resubscribing on reconnect: %r", exc)
                    if pubsub.connection is not None:  # make sure the listener reconnects
                        with contextlib.suppress(Exception):
                            await pubsub.connection.disconnect()
                    return

    def _confirm(self, account_id: str) -> None:
        """Redis confirmed one SUBSCRIBE of ``account_id``'s channel."""
        left = self._unconfirmed.get(account_id, 0) - 1
        if left > 0:
            self._unconfirmed[account_id] = left
            return
        self._unconfirmed.pop(account_id, None)
        event = self._confirmed.get(account_id)
        if event is None or event.is_set():
            return
        event.set()
        if account_id in self._resync:
            self._resync.discard(account_id)
            for sub in list(self._subs.get(account_id, ())):
                sub.offer(RESYNC)

    def _disconnected(self) -> None:
        """The connection is gone: every account's channel is to be subscribed again on
        the next one, and its subscriptions resynced once it is."""
        self.connected.clear()
        self._pubsub = None
        self._sent.clear()
        self._unconfirmed.clear()
        for event in self._confirmed.values():
            event.clear()
        self._resync.update(self._subs)

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
            event = None if message is None else events.parse(message)
            if event is None:
                return item.text
            content = msgspec.json.encode(self.render(event)).decode()
            # The logged bytes with one key more: the same message, not re-encoded.
            text = self._content[key] = item.text[:-1] + ',"content":' + content + "}"
            if len(self._content) > CONTENT_CACHE:
                self._content.popitem(last=False)
        return text

    def fan_out(self, account_id: str, data: bytes) -> None:
        """Hand one published event to every subscription of its account, at once."""
        subs = self._subs.get(account_id)
        if not subs:
            return
        message = events.header(data)
        if message is None:
            log.warning("ignoring a malformed event on %s", account_id)
            return
        if self.lag is not None and (age := metrics.event_age_s(message)) is not None:
            self.lag.observe(max(age, 0.0))
        item = Outgoing(message.seq, data.decode())
        for sub in list(subs):
            sub.offer(item)

    def _on_message(self, msg: dict[str, Any], ended: bytes) -> bool:
        """Handle one pub/sub message; True when it confirms the connection is whole
        (the ended-credentials channel, subscribed last, is confirmed)."""
        if msg["type"] == "message":
            if msg["channel"] == ended:
                self.end_credential(msg["data"].decode(errors="replace"))
            else:
                self.fan_out(msg["channel"].decode()[self._prefix_len :], msg["data"])
        elif msg["type"] == "pong":
            pong = self._pongs.get(msg["data"])
            if pong is not None and not pong.done():
                pong.set_result(None)
        elif msg["type"] == "subscribe":
            if msg["channel"] != ended:
                self._confirm(msg["channel"].decode()[self._prefix_len :])
                return False
            self.connected.set()
            recheck = asyncio.create_task(self._recheck_credentials())
            self._rechecks.add(recheck)
            recheck.add_done_callback(self._rechecks.discard)
            return True
        return False

    async def _run(self) -> None:
        delay = 0.05
        while True:
            # Named, so that CLIENT LIST tells the web processes' hubs apart.
            client = Redis.from_url(self.settings.redis_url or "", client_name=self.client_name)
            pubsub = client.pubsub()
            ended = self._ended_channel.encode()
            try:
                # Every account with subscriptions here, then the ended-credentials
                # channel: its confirmation comes after all of theirs. Each account's
                # subscriptions are resynced from the log once its channel is confirmed,
                # so an event is either in what the resync reads or arrives live (or both).
                self._dirty.update(self._subs)
                self._pubsub = pubsub
                await self._flush()
                await pubsub.subscribe(self._ended_channel)
                async for msg in pubsub.listen():
                    if self._on_message(msg, ended):
                        delay = 0.05  # connected again: the next loss backs off afresh
                raise ConnectionError("pub/sub connection ended")
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("redis pub/sub lost, reconnecting: %r", exc)
            except Exception:
                # A bug here must not silently end live delivery for the whole process.
                log.exception("hub failed, restarting it")
            finally:
                self._disconnected()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            # Exponential backoff with jitter: every web process reconnects, not at once.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
