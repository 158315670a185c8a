"""Delivering to a receiver over HTTP, safely: the URL's host resolved once, every
address it resolves to checked (``server.domain.webhooks.address_refusal``), and the
request sent to the checked address itself, with the host name kept for ``Host`` and
TLS (SNI and the certificate's name). So a name that resolves to a public address when
checked and to a private one a moment later (DNS rebinding) cannot redirect a delivery;
redirects are not followed at all. Answers are read up to 4 KiB."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict

import httpx

from server.domain import webhooks as rules
from server.domain.webhooks import Outcome, Target, WebhookURLRefused
from server.settings import Settings

# Clients kept per host name: a connection is reused only for the name it was opened
# (and its certificate checked) for.
MAX_CLIENTS = 64


async def resolve(target: Target, allow_private: bool) -> str:
    """The address to connect to for ``target``, or WebhookURLRefused: a literal
    address, or every address the name resolves to, checked; nothing is contacted."""
    if "%" in target.host:
        raise WebhookURLRefused("the url's host must not carry an IPv6 scope")
    try:
        literal = ipaddress.ip_address(target.host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        found = [str(literal)]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise WebhookURLRefused(f"{target.host} does not resolve") from None
        # An IPv6 scope ("fe80::1%eth0") is no part of the address checked.
        found = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
        if not found:
            raise WebhookURLRefused(f"{target.host} does not resolve")
    for address in found:
        why = rules.address_refusal(address, allow_private)
        if why is not None:
            raise WebhookURLRefused(f"{target.host} resolves to {why}")
    return found[0]


async def check(url: str, settings: Settings) -> Target:
    """The URL checked as a delivery would check it (at creation: 422 if refused)."""
    target = rules.check_url(url, settings.webhook_allow_http)
    await resolve(target, settings.webhook_allow_private)
    return target


def pinned_url(target: Target, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{target.scheme}://{host}:{target.port}{target.target}"


def host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


class Sender:
    """POSTs deliveries (the worker's one, in its arq ``ctx``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: OrderedDict[str, httpx.AsyncClient] = OrderedDict()

    def _client(self, host: str) -> httpx.AsyncClient:
        client = self._clients.pop(host, None)
        if client is None:
            client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=httpx.Timeout(self.settings.webhook_timeout_s),
                # The environment's proxies would connect somewhere else than the
                # address checked.
                trust_env=False,
            )
        self._clients[host] = client
        while len(self._clients) > MAX_CLIENTS:
            _, old = self._clients.popitem(last=False)
            asyncio.get_running_loop().create_task(old.aclose())
        return client

    async def post(self, url: str, headers: dict[str, str], payload: bytes) -> Outcome:
        """One attempt: resolve and check (again, against rebinding), connect to the
        checked address, send, read at most 4 KiB of the answer."""
        start = time.perf_counter()

        def took() -> int:
            return int((time.perf_counter() - start) * 1_000_000)

        try:
            target = rules.check_url(url, self.settings.webhook_allow_http)
            address = await resolve(target, self.settings.webhook_allow_private)
        except WebhookURLRefused as refused:
            return Outcome(None, f"refused: {refused.message}", took())
        client = self._client(target.host)
        request = client.build_request(
            "POST",
            pinned_url(target, address),
            content=payload,
            headers={**headers, "host": host_header(target), "user-agent": "settle-webhooks"},
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                response = await client.send(request, stream=True)
                try:
                    body = b""
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) >= rules.MAX_RESPONSE_BYTES:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            return Outcome(
                None, f"timeout: no answer in {self.settings.webhook_timeout_s:g} s", took()
            )
        except httpx.TimeoutException:
            return Outcome(
                None, f"timeout: no answer in {self.settings.webhook_timeout_s:g} s", took()
            )
        except httpx.ConnectError as exc:
            return Outcome(None, f"connect: {exc}"[:300] or "connect: refused", took())
        except httpx.HTTPError as exc:
            return Outcome(None, f"error: {type(exc).__name__}: {exc}"[:300], took())
        # PostgreSQL text holds no NUL.
        text = body[: rules.MAX_RESPONSE_BYTES].decode("utf-8", "replace").replace("\x00", "")
        error = ""
        if 300 <= response.status_code < 400:
            where = response.headers.get("location", "")[:200]
            error = f"redirect not followed (to {where})"
        return Outcome(response.status_code, error, took(), text)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.aclose()
