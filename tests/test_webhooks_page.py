"""The Webhooks page over real HTTP: linked from the header, adding an endpoint shows
its secret once, test events and retries land in its delivery log, refusals are said
on the page, forms need the CSRF token, others' endpoints are not found."""

from __future__ import annotations

import dataclasses
import re

import pytest

from server.settings import Settings
from tests.conftest import Stack
from tests.test_sessions import browser, login

SECRET = re.compile(r'data-testid="secret">(whsec_[^<]+)<')


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, webhook_allow_http=True)


async def test_the_page_adds_tests_rotates_and_deletes_an_endpoint(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        csrf = await login(client, alice)
        home = await client.get("/accounts")
        assert 'href="/webhooks"' in home.text
        r = await client.post(
            "/webhooks",
            data={"csrf_token": csrf, "url": "https://93.184.216.34/in", "events": "transfer.*"},
        )
        assert r.status_code == 201, r.text
        first = SECRET.search(r.text)
        assert first is not None
        listed = await client.get("/webhooks")
        assert "https://93.184.216.34/in" in listed.text and first.group(1) not in listed.text
        (wh,) = re.findall(r'data-testid="webhook-(wh_[^"]+)"', listed.text)
        r = await client.post(f"/webhooks/{wh}/test", data={"csrf_token": csrf})
        assert r.status_code == 303
        page = await client.get("/webhooks")
        assert "webhook.test" in page.text and "Pending" in page.text
        (delivery,) = re.findall(r'data-testid="delivery-(msg_[^"]+)"', page.text)
        r = await client.post(
            f"/webhooks/{wh}/deliveries/{delivery}/retry", data={"csrf_token": csrf}
        )
        assert r.status_code == 303
        r = await client.post(f"/webhooks/{wh}/rotate-secret", data={"csrf_token": csrf})
        second = SECRET.search(r.text)
        assert second is not None and second.group(1) != first.group(1)
        r = await client.post(f"/webhooks/{wh}/delete", data={"csrf_token": csrf})
        assert r.status_code == 303
        assert 'data-testid="webhook-' not in (await client.get("/webhooks")).text


async def test_a_disabled_endpoint_says_why_and_is_enabled_again_from_the_page(
    stack: Stack,
) -> None:
    from tests.conftest import execute

    alice = await stack.customer()
    async with browser(stack) as client:
        csrf = await login(client, alice)
        r = await client.post(
            "/webhooks", data={"csrf_token": csrf, "url": "https://93.184.216.34/in"}
        )
        assert r.status_code == 201, r.text
        (wh,) = re.findall(r'data-testid="webhook-(wh_[^"]+)"', r.text)
        assert "Enable again" not in r.text
        await execute(
            stack.store,
            "UPDATE webhook_endpoints SET status = 'disabled',"
            f" disabled_reason = 'failing for 120 h' WHERE id = '{wh}'",
        )
        page = (await client.get("/webhooks")).text
        assert "Disabled: failing for 120 h" in page and "Enable again" in page
        refused = await client.post(f"/webhooks/{wh}/enable", data={"csrf_token": "x"})
        assert refused.status_code == 403
        r = await client.post(f"/webhooks/{wh}/enable", data={"csrf_token": csrf})
        assert r.status_code == 303
        page = (await client.get("/webhooks")).text
        assert "<strong>Enabled</strong>" in page
        assert "Enable again" not in page and "failing for 120 h" not in page


async def test_a_refused_url_is_said_on_the_page(stack: Stack) -> None:
    alice = await stack.customer()
    async with browser(stack) as client:
        csrf = await login(client, alice)
        r = await client.post("/webhooks", data={"csrf_token": csrf, "url": "http://127.0.0.1/x"})
        assert r.status_code == 422
        assert "loopback" in r.text and 'value="http://127.0.0.1/x"' in r.text
        r = await client.post("/webhooks", data={"csrf_token": "nope", "url": "https://a.example"})
        assert r.status_code == 403


async def test_others_endpoints_are_not_found_on_the_page(stack: Stack) -> None:
    alice, eve = await stack.customer(), await stack.customer()
    r = await stack.client.post(
        "/api/webhooks", json={"url": "https://93.184.216.34/in"}, headers=alice.headers
    )
    wh = r.json()["id"]
    async with browser(stack) as client:
        csrf = await login(client, eve)
        for action in ("test", "rotate-secret", "delete"):
            r = await client.post(f"/webhooks/{wh}/{action}", data={"csrf_token": csrf})
            assert r.status_code == 404, action
        assert wh not in (await client.get("/webhooks")).text
