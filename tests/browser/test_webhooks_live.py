"""The Webhooks page in Chromium: a delivery's outcome appears without a reload (the list
asks for itself again while a delivery is pending, and stops once none is), and an
endpoint disabled after failing is enabled again from the page."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobs.webhooks import LINGER_S, create_webhook_worker
from jobs.worker import stop_worker
from server.redisbox import redis_settings
from server.settings import Settings
from tests.browser.conftest import Live
from tests.conftest import execute, free_socket
from tests.test_webhooks_delivery import listening


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, webhook_allow_http=True, webhook_allow_private=True, worker_poll_ms=20
    )


@pytest.fixture
async def delivering(live: Live) -> AsyncIterator[Live]:
    """``live`` with the webhooks worker running beside the settlement worker."""
    s = live.stack.settings
    assert s.redis_url is not None
    worker = create_webhook_worker(
        s, redis_settings(s, s.redis_url), handle_signals=False, store=live.stack.store
    )
    task = asyncio.create_task(worker.main())
    try:
        yield live
    finally:
        await stop_worker(worker, task, LINGER_S + 3)


async def test_a_deliverys_outcome_appears_without_a_reload(delivering: Live) -> None:
    answer = asyncio.Event()

    async def hook(request: Request) -> Response:
        await answer.wait()  # the receiver takes its time: the page shows Pending first
        return Response(status_code=200)

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    sock = free_socket()
    alice = await delivering.stack.customer()
    page = await delivering.open_account(alice)
    async with listening(receiver, sock):
        await page.goto(f"{delivering.stack.base_url}/webhooks")
        await page.get_by_label("URL (https://)").fill(
            f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        )
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.get_by_test_id("secret")).to_contain_text("whsec_")
        await page.goto(f"{delivering.stack.base_url}/webhooks")
        await page.get_by_role("button", name="Send test event").click()
        listed = page.get_by_test_id("webhooks-list")
        await expect(listed).to_contain_text("webhook.test")
        await expect(listed).to_contain_text("Pending")
        await expect(listed).to_have_attribute("hx-trigger", "every 2s")
        await page.evaluate("() => { window.sameDocument = true; }")  # a reload forgets it
        answer.set()
        await expect(listed).to_contain_text("Delivered (HTTP 200", timeout=15_000)
        assert await page.evaluate("() => window.sameDocument === true"), "no reload"
        await expect(listed).not_to_have_attribute("hx-trigger", "every 2s")


async def test_a_disabled_endpoint_is_enabled_again_from_the_page(live: Live) -> None:
    alice = await live.stack.customer()
    r = await live.stack.client.post(
        "/api/webhooks", json={"url": "https://93.184.216.34/in"}, headers=alice.headers
    )
    hook = r.json()["id"]
    await execute(
        live.stack.store,
        "UPDATE webhook_endpoints SET status = 'disabled',"
        f" disabled_reason = 'failing for 120 h; last: HTTP 500' WHERE id = '{hook}'",
    )
    page = await live.open_account(alice)
    await page.goto(f"{live.stack.base_url}/webhooks")
    card = page.get_by_test_id(f"webhook-{hook}")
    await expect(card.get_by_role("alert")).to_have_text(
        "Disabled: failing for 120 h; last: HTTP 500"
    )
    await card.get_by_role("button", name="Enable again").click()
    await expect(card.get_by_text("Enabled", exact=True)).to_be_visible()
    await expect(card.get_by_role("alert")).to_have_count(0)
