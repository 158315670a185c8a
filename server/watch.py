"""``settle watch ACCOUNT``: print an account's live events as JSON lines.

A reference client of the stream: it resumes after any disconnect with
``since=<last seq seen>``, so it prints every event once, in order, even across
server restarts and slow-subscriber closes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TextIO

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

# Close codes that mean "retrying cannot help": bad query, not authenticated, forbidden.
FATAL = {4400: "bad request", 4401: "not authenticated", 4403: "not your account"}


class WatchError(Exception):
    """The server refused the subscription for good (wrong token or account)."""


def fetch_token(url: str, username: str, password: str) -> str:
    """Exchange a username and password for an API token (``POST /api/tokens``)."""
    body = json.dumps({"username": username, "password": password}).encode()
    request = urllib.request.Request(  # noqa: S310 (the URL is the user's own server)
        url.rstrip("/") + "/api/tokens",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return str(json.load(response)["token"])
    except urllib.error.HTTPError as exc:
        raise WatchError(f"login failed: HTTP {exc.code}") from None
    except OSError as exc:
        raise WatchError(f"cannot reach {url}: {exc}") from None


def stream_url(url: str, account: str, since: int | None) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = {"account": account} | ({} if since is None else {"since": str(since)})
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/ws", urllib.parse.urlencode(query), ""))


async def watch(
    url: str,
    account: str,
    token: str,
    since: int | None = None,
    out: TextIO = sys.stdout,
    max_backoff_s: float = 10.0,
) -> None:
    """Print events until cancelled; reconnect with backoff and jitter, never skipping."""
    headers = {"Authorization": f"Bearer {token}"}
    delay = 0.1
    while True:
        try:
            async with connect(
                stream_url(url, account, since), additional_headers=headers, max_size=2**22
            ) as ws:
                async for raw in ws:
                    message = orjson.loads(raw)
                    if message.get("type") == "ping":
                        continue
                    since = int(message["seq"])
                    delay = 0.1  # something arrived: the link is healthy again
                    out.write(orjson.dumps(message).decode() + "\n")
                    out.flush()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code in FATAL:
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                raise WatchError(f"{FATAL[code]} ({code} {reason})".strip()) from None
        except (OSError, InvalidHandshake, TimeoutError):
            pass  # the server is down or restarting: try again
        # Jitter keeps a fleet of watchers from reconnecting in lockstep after a restart.
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, max_backoff_s)


def run(
    url: str,
    account: str,
    token: str | None,
    username: str | None,
    password: str | None,
    since: int | None,
) -> int:
    """The CLI body: resolve credentials, then watch until Ctrl+C."""
    try:
        if token is None:
            if username is None or password is None:
                print("settle watch: give --token, or --username and --password", file=sys.stderr)
                return 2
            token = fetch_token(url, username, password)
        asyncio.run(watch(url, account, token, since))
    except WatchError as exc:
        print(f"settle watch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
