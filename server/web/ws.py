"""``GET /ws?account=ID&since=SEQ``: an account's events, replayed from the log after
``since`` and then live, in seq order, each once (see the spec's "WebSocket stream").

Close codes: 4400 bad query, 4401 not authenticated, 4403 not the owner (or no such
account, or a cross-site browser), 1008 binary frames or a flood of client messages,
1009 a client message over 4 KiB, 1013 a subscriber too slow to keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from starlette.datastructures import QueryParams
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.domain.events import PING
from server.live.hub import Subscription
from server.live.inbox import STOP, Outgoing
from server.store import reads
from server.web import auth
from server.web.credentials import User
from server.web.services import services

log = logging.getLogger("settle.ws")

MAX_CLIENT_MESSAGE = 4096
CLIENT_RATE = 20.0  # messages per second, with a burst of as many
# How long a close frame may wait behind a slow reader's unread data before we give up
# on the handshake and let the server drop the connection.
CLOSE_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Close:
    code: int
    reason: str


class BadQuery(Exception):
    """The query string does not name an account and a valid ``since``."""


def query(websocket: WebSocket) -> QueryParams:
    """The socket's query, parsed afresh: ``websocket.query_params`` would keep it for
    the socket's whole life, half a kilobyte of each of 10,000 idle sockets."""
    return QueryParams(websocket.scope.get("query_string", b""))


def parse_query(websocket: WebSocket) -> tuple[str, int | None]:
    """(account id, since); since None means: no replay, live from now."""
    params = query(websocket)
    account = params.get("account", "")
    if not account or len(account) > 64 or not account.isprintable():
        raise BadQuery("account is required")
    raw = params.get("since")
    if raw is None or raw == "":
        return account, None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadQuery("since must be a whole number >= 0")
    return account, int(raw)


def same_origin(websocket: WebSocket) -> bool:
    """A browser's cookie rides along on cross-site WebSocket handshakes too, so a
    session-authenticated socket must come from a page of this very app."""
    origin = websocket.headers.get("origin", "").lower()
    host = websocket.headers.get("host", "").lower()
    scheme = "https" if websocket.url.scheme in ("wss", "https") else "http"
    return bool(host) and origin == f"{scheme}://{host}"


async def stream(websocket: WebSocket) -> None:
    """The WebSocket endpoint. A refusal is accepted and then closed, so that it carries a
    close code; a subscriber is registered before the handshake completes, so a client
    whose handshake succeeded misses nothing published after it."""
    refusal = await _refusal(websocket)
    if isinstance(refusal, Close):
        await websocket.accept()
        await _close(websocket, refusal)
        return
    user, account_id, since, start_seq = refusal
    app = services(websocket)
    # Registered before the replay reads the log: live events buffer meanwhile. htmx
    # pages (fragments=1) get each message with its HTML ``content``.
    sub = app.hub.subscribe(
        account_id,
        user.username,
        start_seq if since is None else since,
        fragments=query(websocket).get("fragments") == "1",
        credential=user.credential,
    )
    try:
        await websocket.accept()
    except BaseException:
        app.hub.unsubscribe(sub)
        raise
    # This task reads; the sender writes, with a task only while it has something to
    # send (an idle socket is this task and a few small objects: 10,000 may be open).
    sender = Sender(websocket, sub, app.settings.ws_ping_s, user.expires_at)
    try:
        close = await _receive_loop(websocket)
    finally:
        app.hub.unsubscribe(sub)
        await sender.stop()
    if close is not None:
        await _close(websocket, close)


async def _refusal(websocket: WebSocket) -> Close | tuple[User, str, int | None, int]:
    """Why this socket may not subscribe, or (user, account, since, account's seq)."""
    user = await auth.authenticate(websocket)
    if user is None:
        return Close(4401, "unauthorized")
    if user.via == "session" and not same_origin(websocket):
        return Close(4403, "cross-origin")
    try:
        account_id, since = parse_query(websocket)
    except BadQuery as exc:
        return Close(4400, str(exc))
    # "Not yours" and "does not exist" look the same: ids must not be probed.
    seq = await reads.owned_account_seq(services(websocket).store, user.id, account_id)
    if seq is None:
        return Close(4403, "forbidden")
    return user, account_id, since, seq


class Sender:
    """Sends a subscription's messages in seq order: its first replay, then what the hub
    queues, a ping every ``ping_s`` seconds (with a catch-up from the log, which reveals
    a lost publish), and the close when the subscription is stopped (STOP), or when the
    credential it was opened with expires (``expires_at``, microseconds since the
    epoch; 0: never; revocation and logout stop it through the hub).

    Its task runs only while there is something to send: one at a time, each draining
    the inbox until it is empty, so order is kept and an idle socket holds no task. One
    timer serves the ping and the expiry."""

    __slots__ = (
        "closed",
        "expires_at",
        "ping_due",
        "ping_s",
        "sub",
        "task",
        "timer",
        "websocket",
    )

    def __init__(
        self, websocket: WebSocket, sub: Subscription, ping_s: float, expires_at: int = 0
    ) -> None:
        self.websocket = websocket
        self.sub = sub
        self.ping_s = ping_s
        self.expires_at = expires_at
        self.closed = False
        self.ping_due = False
        self.timer: asyncio.TimerHandle | None = None
        self._arm()
        self.task: asyncio.Task[None] | None = asyncio.create_task(self._run(first=True))
        sub.queue.notify = self.wake

    def wake(self) -> None:
        """Something to send: start a task unless one is running (it drains all)."""
        if not self.closed and self.task is None:
            self.task = asyncio.create_task(self._run())

    def _left_s(self) -> float | None:
        """Seconds until the credential expires (None: it never does)."""
        return self.expires_at / 1_000_000 - time.time() if self.expires_at else None

    def _arm(self) -> None:
        left = self._left_s()
        delay = self.ping_s if left is None else max(min(self.ping_s, left), 0.0)
        self.timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self.timer = None
        left = self._left_s()
        if left is not None and left <= 0.001:
            self.sub.stop(4401)  # STOP: the task closes the socket
        else:
            self.ping_due = True
            self.wake()
        if self.timer is None and self.task is None and not self.closed:
            self._arm()

    async def stop(self) -> None:
        self.closed = True
        self.sub.queue.notify = None
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self, first: bool = False) -> None:
        try:
            if first:
                await self._send(await self.sub.start())
            while not self.closed:
                if self.ping_due:
                    self.ping_due = False
                    await self.websocket.send_text(PING)
                    await self._send(await self.sub.catch_up())
                items = self.sub.queue.take()
                if not items:
                    break
                await self._send(await self.sub.deliver_all(items))
        except (WebSocketDisconnect, OSError, RuntimeError):
            self.closed = True
        except Exception as exc:  # the database unreachable for a catch-up, say
            log.warning("stream of %s ended: %r", self.sub.account_id, exc)
            await self._close(Close(1011, CLOSE_REASONS[1011]))
        finally:
            if not self.closed and self.timer is None:
                self._arm()
            if self.task is asyncio.current_task():
                self.task = None  # a finished task is a kilobyte an idle socket need not keep

    async def _send(self, batch: list[Outgoing]) -> None:
        for item in batch:
            if item is STOP:
                code = self.sub.close_code
                await self._close(Close(code, CLOSE_REASONS[code]))
                return
            await self.websocket.send_text(self.sub.encode(item))

    async def _close(self, close: Close) -> None:
        self.closed = True
        await _close(self.websocket, close)


async def _receive_loop(websocket: WebSocket) -> Close | None:
    """Client messages mean nothing yet; they are read only to notice a close, and
    bounded so that a client cannot make the server work for it."""
    tokens, last = CLIENT_RATE, time.monotonic()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("bytes") is not None:
            return Close(1008, "binary messages are not accepted")
        if len((message.get("text") or "").encode()) > MAX_CLIENT_MESSAGE:
            return Close(1009, "client messages are limited to 4 KiB")
        now = time.monotonic()
        tokens = min(CLIENT_RATE, tokens + (now - last) * CLIENT_RATE) - 1
        last = now
        if tokens < 0:
            return Close(1008, "too many client messages")


CLOSE_REASONS = {
    1011: "server error: reconnect with since",
    1013: "too slow: reconnect with since",
    4401: "the credential ended; authenticate again",
}


async def _close(websocket: WebSocket, close: Close) -> None:
    # The close frame queues behind unread data; a reader that never drains gets dropped.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(close.code, close.reason), CLOSE_WAIT_S)
