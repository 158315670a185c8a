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

from starlette.websockets import WebSocket, WebSocketDisconnect

from server import auth, reads
from server.events import PING
from server.hub import STOP, Subscription
from server.services import services

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


def parse_query(websocket: WebSocket) -> tuple[str, int | None]:
    """(account id, since); since None means: no replay, live from now."""
    account = websocket.query_params.get("account", "")
    if not account or len(account) > 64 or not account.isprintable():
        raise BadQuery("account is required")
    raw = websocket.query_params.get("since")
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
        fragments=websocket.query_params.get("fragments") == "1",
        credential=user.credential,
    )
    try:
        await websocket.accept()
    except BaseException:
        app.hub.unsubscribe(sub)
        raise
    # Two tasks a socket, the fewest that can both send and notice a client's close: this
    # one reads, ``sender`` writes (and closes the socket when ``sub`` is stopped).
    expiry = _expire(sub, user.expires_at)
    sender = asyncio.create_task(_send_loop(websocket, sub, app.settings.ws_ping_s))
    try:
        close = await _receive_loop(websocket)
    finally:
        app.hub.unsubscribe(sub)
        if expiry is not None:
            expiry.cancel()
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    if close is not None:
        await _close(websocket, close)


async def _refusal(websocket: WebSocket) -> Close | tuple[auth.User, str, int | None, int]:
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


async def _send_loop(websocket: WebSocket, sub: Subscription, ping_s: float) -> None:
    try:
        batch = await sub.start()
        while True:
            for item in batch:
                if item is STOP:
                    code = sub.close_code
                    await _close(websocket, Close(code, CLOSE_REASONS[code]))
                    return
                await websocket.send_text(sub.encode(item))
            try:
                # A timeout scope rather than wait_for: no extra task and loop step per
                # message, which adds up when one event wakes a thousand sockets at once.
                async with asyncio.timeout(ping_s):
                    batch = await sub.next()
            except TimeoutError:
                await websocket.send_text(PING)
                # A publish lost without a later event to reveal the gap shows up here.
                batch = await sub.catch_up()
    except (WebSocketDisconnect, OSError, RuntimeError):
        return
    except Exception as exc:  # the database unreachable for a catch-up, say
        log.warning("stream of %s ended: %r", sub.account_id, exc)
        await _close(websocket, Close(1011, CLOSE_REASONS[1011]))


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


def _expire(sub: Subscription, expires_at: int) -> asyncio.TimerHandle | None:
    """Stop ``sub`` (4401) when the credential it was opened with expires (microseconds
    since the epoch; 0: never). Revocation and logout stop it through the hub."""
    if not expires_at:
        return None
    loop = asyncio.get_running_loop()
    left = max(expires_at / 1_000_000 - time.time(), 0.0)
    return loop.call_at(loop.time() + left, sub.stop, 4401)


async def _close(websocket: WebSocket, close: Close) -> None:
    # The close frame queues behind unread data; a reader that never drains gets dropped.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(close.code, close.reason), CLOSE_WAIT_S)
