"""Webhooks' rules without I/O: event patterns, the URLs and addresses settle delivers
to, signatures a Standard Webhooks receiver accepts, the retry schedule."""

from __future__ import annotations

import random
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from server.domain import errors
from server.domain import webhooks as rules


@pytest.mark.parametrize(
    ("patterns", "event", "wanted"),
    [
        (("*",), "transfer.completed", True),
        (("transfer.*",), "transfer.pending", True),
        (("transfer.*",), "account.frozen", False),
        (("account.*", "transfer.failed"), "transfer.failed", True),
        (("transfer.completed",), "transfer.completed", True),
        (("transfer.completed",), "transfer.failed", False),
        (("account.*",), rules.TEST_EVENT, True),
    ],
)
def test_an_endpoint_wants_the_events_its_patterns_match(
    patterns: tuple[str, ...], event: str, wanted: bool
) -> None:
    assert rules.wants(patterns, event) is wanted


def test_events_default_to_all_and_are_checked() -> None:
    assert rules.patterns(None) == ("*",)
    assert rules.patterns(["transfer.*", "transfer.*", "account.frozen"]) == (
        "transfer.*",
        "account.frozen",
    )
    for bad in ([], "transfer.*", ["Transfer"], ["a b"], [1], ["x" * 65]):
        with pytest.raises(errors.InvalidField):
            rules.patterns(bad)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "ftp://example.com/",
        "https://",
        "https://user:pw@example.com/",
        "https://exa mple.com/",
        "https://example.com:99999/",
        "javascript:alert(1)",
    ],
)
def test_urls_settle_refuses_before_resolving_them(url: str) -> None:
    with pytest.raises(rules.WebhookURLRefused) as refused:
        rules.check_url(url, allow_http=False)
    assert refused.value.code == "webhook_url_refused" and refused.value.status == 422


def test_a_url_is_split_into_where_to_connect_and_what_to_ask() -> None:
    target = rules.check_url("https://hooks.example.com/in?x=1", allow_http=False)
    assert target == rules.Target("https", "hooks.example.com", 443, "/in?x=1")
    plain = rules.check_url("http://127.0.0.1:8123", allow_http=True)
    assert plain == rules.Target("http", "127.0.0.1", 8123, "/")


@pytest.mark.parametrize(
    ("address", "refused", "refused_even_if_allowed"),
    [
        ("93.184.216.34", False, False),
        ("2606:2800:220:1:248:1893:25c8:1946", False, False),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("10.1.2.3", True, False),
        ("192.168.0.10", True, False),
        ("172.16.5.4", True, False),
        ("100.64.0.1", True, False),
        ("224.0.0.1", True, False),
        ("fc00::1", True, False),
        ("::ffff:127.0.0.1", True, False),
        ("169.254.169.254", True, True),
        ("::ffff:169.254.169.254", True, True),
        ("fe80::1", True, True),
        ("fd00:ec2::254", True, True),
        ("0.0.0.0", True, True),  # noqa: S104
    ],
)
def test_addresses_settle_never_delivers_to(
    address: str, refused: bool, refused_even_if_allowed: bool
) -> None:
    assert (rules.address_refusal(address, allow_private=False) is not None) is refused
    assert (rules.address_refusal(address, allow_private=True) is not None) is (
        refused_even_if_allowed
    )


def test_a_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = rules.new_secret()
    assert secret.startswith("whsec_")
    now = int(time.time())
    payload = b'{"type":"transfer.completed","seq":3}'
    headers = rules.headers([secret], "msg_1", now, payload)
    assert Webhook(secret).verify(payload, headers)["seq"] == 3
    with pytest.raises(WebhookVerificationError):
        Webhook(rules.new_secret()).verify(payload, headers)


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = rules.new_secret(), rules.new_secret()
    now = int(time.time())
    headers = rules.headers([new, old], "msg_2", now, b"{}")
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (old, new):
        Webhook(secret).verify(b"{}", headers)


def test_the_retry_schedule_is_jittered_and_ends() -> None:
    rng = random.Random(7)
    schedule = (5, 300)
    first = rules.retry_in_s(schedule, 1, rng)
    second = rules.retry_in_s(schedule, 2, rng)
    assert first is not None and 4 <= first <= 6
    assert second is not None and 240 <= second <= 360
    assert rules.retry_in_s(schedule, 3, rng) is None


def test_a_delivery_connects_to_the_checked_address_and_keeps_the_name() -> None:
    from server.live.webhook_http import host_header, pinned_url

    target = rules.check_url("https://hooks.example.com:8443/in?x=1", allow_http=False)
    assert pinned_url(target, "93.184.216.34") == "https://93.184.216.34:8443/in?x=1"
    assert pinned_url(target, "2606:2800::1") == "https://[2606:2800::1]:8443/in?x=1"
    assert host_header(target) == "hooks.example.com:8443"
    default = rules.check_url("https://hooks.example.com/in", allow_http=False)
    assert host_header(default) == "hooks.example.com"


async def test_a_scoped_ipv6_host_is_refused_without_an_error() -> None:
    from server.live.webhook_http import resolve

    target = rules.check_url("https://[fe80::1%25eth0]/", allow_http=False)
    with pytest.raises(rules.WebhookURLRefused):
        await resolve(target, allow_private=True)
