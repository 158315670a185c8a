"""Browser fixtures: a real uvicorn server, a real (non-burst) arq worker settling in
the background, and Debian's Chromium driven by Playwright, all in one event loop.

Playwright's own browser download is not used: the tests need /usr/bin/chromium
(``apt-get install chromium``) and skip with a clear message without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from jobs.worker import stop_worker
from server.settings import Settings
from server.store import Store
from server.web.app import create_app
from tests.conftest import Customer, Stack, serve

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DOC_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Long enough to see (and assert) the pending state; short enough to keep tests quick.
SETTLE_DELAY_MS = 1500

if not CHROMIUM.exists():
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM}: apt-get install chromium",
        allow_module_level=True,
    )


@dataclasses.dataclass
class Live:
    """A running settle (web + worker) and a browser to look at it with."""

    stack: Stack
    browser: Browser

    async def context(
        self,
        js: bool = True,
        phone: bool = False,
        bypass_csp: bool = False,
        timezone: str | None = None,
    ) -> BrowserContext:
        viewport: ViewportSize = (
            {"width": 390, "height": 844} if phone else {"width": 1100, "height": 900}
        )
        return await self.browser.new_context(
            java_script_enabled=js,
            viewport=viewport,
            is_mobile=phone,
            has_touch=phone,
            bypass_csp=bypass_csp,
            timezone_id=timezone,
        )

    async def login(self, page: Page, who: Customer) -> None:
        """Log in with the keyboard alone, as a screen-reader user would."""
        await page.goto(f"{self.stack.base_url}/login")
        await page.get_by_label("Username").fill(who.username)
        await page.keyboard.press("Tab")
        await page.keyboard.type("pw-" + who.username)
        await page.keyboard.press("Enter")
        await page.wait_for_url("**/accounts")

    async def open_account(
        self, who: Customer, context: BrowserContext | None = None, js: bool = True
    ) -> Page:
        """A logged-in page on ``who``'s account, live (connected to the stream)."""
        context = context or await self.context(js)
        page = await context.new_page()
        await self.login(page, who)
        await page.goto(f"{self.stack.base_url}/accounts/{who.account}")
        if js:
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        return page

    async def send(
        self, page: Page, to: str, amount: str, memo: str = "", first: bool = False
    ) -> None:
        """Fill the send form and press Send; ``first``: this is the first payment to
        ``to``, so the page asks "Send … to …?" first, and the answer is yes."""
        await page.get_by_label("Recipient").fill(to)
        await page.get_by_label("Amount").fill(amount)
        await page.get_by_label("Memo").fill(memo)
        await page.get_by_role("button", name="Send", exact=True).click()
        if first:
            question = page.get_by_test_id("confirm-recipient")
            await expect(question).to_contain_text(f"Send ${amount} to ")
            await question.get_by_role("button", name=f"Yes, send ${amount}").click()


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def docshot(page: Page, name: str) -> None:
    """A screenshot of a state the docs show: always into tests/artifacts/, and into
    docs/screenshots/ when SETTLE_SCREENSHOTS=1 (``make screenshots``)."""
    await screenshot(page, name)
    if os.environ.get("SETTLE_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(DOC_SHOTS / f"{name}.png"), full_page=True)


@contextlib.asynccontextmanager
async def running(settings: Settings, store: Store) -> AsyncIterator[Live]:
    app = create_app(settings, store=store)
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        async_playwright() as pw,
    ):
        stack = Stack(settings, store, url, client)
        worker = stack.worker(burst=False)
        task = asyncio.create_task(worker.main())
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield Live(stack, browser)
        finally:
            await browser.close()
            await stop_worker(worker, task, settings.job_timeout_s)


@pytest.fixture
async def live(settings: Settings, store: Store) -> AsyncIterator[Live]:
    """Transfers settle as fast as the worker can."""
    async with running(settings, store) as stack:
        yield stack


@pytest.fixture
async def slow(settings: Settings, store: Store) -> AsyncIterator[Live]:
    """Transfers stay pending for SETTLE_DELAY_MS first, like the demo."""
    async with running(dataclasses.replace(settings, settle_delay_ms=SETTLE_DELAY_MS), store) as s:
        yield s
