"""``settle watch ACCOUNT``: print an account's live events as JSON lines; and
``settle webhooks listen URL``: forward the caller's events, signed as webhooks are, to
a local URL (like ``stripe listen``), printing each with its outcome.

A reference client of the stream: it resumes after any disconnect with
``since=<last seq seen>``, so it handles every event once, in order, even across
server restarts and slow-subscriber closes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import httpx
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from server.domain import webhooks

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


Handler = Callable[[dict[str, Any], bytes], Awaitable[None]]


async def follow(
    url: str,
    account: str,
    token: str,
    handle: Handler,
    since: int | None = None,
    max_backoff_s: float = 10.0,
) -> None:
    """Hand each event (decoded, and its bytes as sent) to ``handle`` until cancelled;
    reconnect with backoff and jitter, never skipping."""
    headers = {"Authorization": f"Bearer {token}"}
    delay = 0.1
    while True:
        try:
            async with connect(
                stream_url(url, account, since), additional_headers=headers, max_size=2**22
            ) as ws:
                async for raw in ws:
                    data = raw.encode() if isinstance(raw, str) else bytes(raw)
                    message = msgspec.json.decode(data)
                    if message.get("type") == "ping":
                        continue
                    since = int(message["seq"])
                    delay = 0.1  # something arrived: the link is healthy again
                    await handle(message, data)
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


async def watch(
    url: str,
    account: str,
    token: str,
    since: int | None = None,
    out: TextIO = sys.stdout,
    max_backoff_s: float = 10.0,
) -> None:
    """Print events until cancelled; reconnect with backoff and jitter, never skipping."""

    async def show(message: dict[str, Any], raw: bytes) -> None:
        out.write(msgspec.json.encode(message).decode() + "\n")
        out.flush()

    await follow(url, account, token, show, since, max_backoff_s)


async def listen(url: str, token: str, forward_to: str, secret: str, out: TextIO) -> None:
    """Forward every new event of the caller's accounts to ``forward_to`` as a webhook
    signed with ``secret`` (the stream's message as the body, Standard Webhooks
    headers), printing each with its outcome, until cancelled. One failed forward is
    printed, not retried: this is for development."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30, follow_redirects=False, trust_env=False) as client:
        r = await client.get(url.rstrip("/") + "/api/accounts", headers=headers)
        if r.status_code != 200:
            raise WatchError(f"cannot list your accounts: HTTP {r.status_code}")
        accounts = [(a["id"], int(a["seq"])) for a in r.json()["accounts"]]
        out.write(f"Forwarding the events of {len(accounts)} accounts to {forward_to}\n")
        out.write(f"Your webhook signing secret is {secret} (^C to quit)\n")
        out.flush()

        async def forward(message: dict[str, Any], raw: bytes) -> None:
            msg_id = f"evt_{message['account']}_{message['seq']}"
            signed = webhooks.headers([secret], msg_id, int(time.time()), raw)
            start = time.perf_counter()
            try:
                answer = await client.post(forward_to, content=raw, headers=signed)
                outcome = f"{answer.status_code}"
            except httpx.HTTPError as exc:
                outcome = f"error: {type(exc).__name__} {exc}".strip()
            took = (time.perf_counter() - start) * 1000
            out.write(
                f"{message['type']} account={message['account']} seq={message['seq']}"
                f" id={msg_id} -> {outcome} ({took:.0f} ms)\n"
            )
            out.flush()

        tasks = [asyncio.create_task(follow(url, a, token, forward, seq)) for a, seq in accounts]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


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


def run_listen(
    url: str, forward_to: str, token: str | None, username: str | None, password: str | None
) -> int:
    """The CLI body of ``settle webhooks listen``: resolve credentials, then forward
    until Ctrl+C."""
    try:
        if token is None:
            if username is None or password is None:
                print(
                    "settle webhooks listen: give --token, or --username and --password",
                    file=sys.stderr,
                )
                return 2
            token = fetch_token(url, username, password)
        asyncio.run(listen(url, token, forward_to, webhooks.new_secret(), sys.stdout))
    except WatchError as exc:
        print(f"settle webhooks listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
