"""Webhooks' rules, with no I/O: which events an endpoint wants (``*`` patterns), which
URLs and addresses settle may deliver to (SSRF), secrets, the retry schedule and the
delivery headers (Standard Webhooks signatures)."""

from __future__ import annotations

import base64
import dataclasses
import enum
import fnmatch
import ipaddress
import random
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
from standardwebhooks import Webhook

from server.domain import errors

TEST_EVENT = "webhook.test"
MAX_URL = 2048
MAX_PATTERNS = 20
MAX_PATTERN = 64
# A rotated secret keeps signing beside the new one this long (Standard Webhooks allows
# several signatures), so receivers can switch without dropping a delivery.
ROTATION_OVERLAP_S = 24 * 3600
# What a receiver's answer may leave in the delivery log.
MAX_RESPONSE_BYTES = 4096
_PATTERN = re.compile(r"[a-z*][a-z0-9_.*]*")

# Never delivered to, whatever the settings: the cloud metadata services live here.
_ALWAYS_REFUSED = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud's metadata
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
)


class EndpointStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    # Its retries are spent (or its endpoint was disabled): only "retry" sends it again.
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    user_id: str
    url: str
    description: str
    events: tuple[str, ...]
    status: EndpointStatus
    disabled_reason: str
    secret: str
    old_secret: str | None
    old_secret_until: int | None
    failing_since: int | None
    created_at: int

    @classmethod
    def of(cls, row: Any) -> Endpoint:
        return cls(
            row["id"],
            row["user_id"],
            row["url"],
            row["description"],
            tuple(row["events"].split()),
            EndpointStatus(row["status"]),
            row["disabled_reason"],
            row["secret"],
            row["old_secret"],
            row["old_secret_until"],
            row["failing_since"],
            row["created_at"],
        )

    def secrets_at(self, at_us: int) -> tuple[str, ...]:
        """The secrets that sign a delivery now: the current one, and a rotated one
        during its overlap."""
        old = self.old_secret
        if old and self.old_secret_until is not None and at_us < self.old_secret_until:
            return (self.secret, old)
        return (self.secret,)


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    at: int
    status_code: int | None
    error: str
    duration_us: int
    next_attempt_at: int | None

    @classmethod
    def of(cls, row: Any) -> Attempt:
        return cls(
            row["at"], row["status_code"], row["error"], row["duration_us"], row["next_attempt_at"]
        )

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    endpoint_id: str
    position: int
    type: str
    payload: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: int | None
    created_at: int
    delivered_at: int | None
    tries: tuple[Attempt, ...] = ()

    @classmethod
    def of(cls, row: Any, tries: Sequence[Attempt] = ()) -> Delivery:
        return cls(
            row["id"],
            row["endpoint_id"],
            row["position"],
            row["type"],
            row["payload"],
            DeliveryStatus(row["status"]),
            row["attempts"],
            row["next_attempt_at"],
            row["created_at"],
            row["delivered_at"],
            tuple(tries),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: an HTTP status, or an error (timeout, refused, a
    redirect not followed, an address refused), and how long it took."""

    status_code: int | None
    error: str
    duration_us: int
    response: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def label(self) -> str:
        """For the metrics: delivered, http_<status>, or the error's kind."""
        if self.ok:
            return "delivered"
        if self.status_code is not None:
            return f"http_{self.status_code // 100}xx"
        return self.error.split(":", 1)[0] or "error"


class WebhookURLRefused(errors.SettleError):
    """A URL settle will not deliver to (SSRF): why, without having contacted it."""

    status, code = 422, "webhook_url_refused"

    def __init__(self, message: str) -> None:
        super().__init__(message, "url")


class TooManyWebhooks(errors.SettleError):
    status, code = 422, "too_many_webhooks"


class WebhookNotFound(errors.SettleError):
    status, code = 404, "webhook_not_found"


class DeliveryNotFound(errors.SettleError):
    status, code = 404, "delivery_not_found"


def patterns(raw: object) -> tuple[str, ...]:
    """An endpoint's ``events`` as sent: a list of types or ``*`` patterns (default all)."""
    if raw is None:
        return ("*",)
    if not isinstance(raw, list) or not raw or len(raw) > MAX_PATTERNS:
        raise errors.InvalidField(
            f"events must be a list of 1 to {MAX_PATTERNS} event types or patterns", "events"
        )
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str) or len(item) > MAX_PATTERN or not _PATTERN.fullmatch(item):
            raise errors.InvalidField(
                "each event must be a type like transfer.completed, or a pattern like transfer.*",
                "events",
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def wants(event_patterns: Sequence[str], event_type: str) -> bool:
    """Whether an endpoint with these patterns is sent ``event_type``; ``webhook.test``
    always is."""
    if event_type == TEST_EVENT:
        return True
    return any(fnmatch.fnmatchcase(event_type, p) for p in event_patterns)


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked URL's parts: where to connect (after resolving ``host``) and what to ask."""

    scheme: str
    host: str
    port: int
    # The path and query, as sent in the request line.
    target: str


def check_url(url: str, allow_http: bool) -> Target:
    """The URL's parts, or ``WebhookURLRefused``: https only (unless ``allow_http``), a
    host, no credentials in it."""
    if len(url) > MAX_URL or not url.isascii() or not url.isprintable() or " " in url:
        raise WebhookURLRefused(f"the url must be printable ASCII, at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookURLRefused("the url is not a valid URL") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise WebhookURLRefused(f"the url must start with {' or '.join(allowed)}://")
    if not parts.hostname:
        raise WebhookURLRefused("the url must name a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLRefused("the url must not carry credentials")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default, target)


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why settle must not connect to ``address`` (an IP), or None.

    Link-local and the cloud metadata addresses: never. Loopback, private, multicast,
    reserved and unspecified: unless ``allow_private`` (local development and tests)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or any(ip in net for net in _ALWAYS_REFUSED):
        return f"{ip} is a link-local or cloud metadata address"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return f"{ip} is a private or reserved address"
    return None


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: ``whsec_`` + base64 of 24 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signature(secrets_: Sequence[str], msg_id: str, at_s: int, payload: bytes) -> str:
    """``webhook-signature``: one ``v1,`` signature per secret in force, space-separated."""
    when = datetime.fromtimestamp(at_s, UTC)
    return " ".join(Webhook(s).sign(msg_id, when, payload) for s in secrets_)


def headers(secrets_: Sequence[str], msg_id: str, at_s: int, payload: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at_s),
        "webhook-signature": signature(secrets_, msg_id, at_s, payload),
        "content-type": "application/json",
    }


def retry_in_s(schedule: Sequence[int], failed_attempts: int, rng: random.Random) -> float | None:
    """Seconds until the next attempt after ``failed_attempts`` failures (with ±20 %
    jitter, so receivers coming back are not hit by every retry at once), or None when
    the schedule is spent."""
    if failed_attempts > len(schedule):
        return None
    base = schedule[failed_attempts - 1]
    return base * rng.uniform(0.8, 1.2)


def ping_payload(endpoint_id: str, msg_id: str, at: str) -> bytes:
    """The body of a ``webhook.test`` delivery."""
    return msgspec.json.encode(
        {"type": TEST_EVENT, "webhook": endpoint_id, "id": msg_id, "seq": 0, "at": at}
    )
