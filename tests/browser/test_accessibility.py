"""WCAG 2.2 AA with axe-core (vendored: tests/browser/vendor/): no serious or critical
violation on the login, dashboard, account, transfer, statement and error pages, at a
desk and on a phone, including an account page with live changes and a failed transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from server import admin
from tests.browser.conftest import Live

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


async def violations(page: Page) -> list[dict[str, Any]]:
    """axe's serious and critical findings on the page as it is now."""
    await page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = await page.evaluate(
        "(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}})", TAGS
    )
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["html"] for n in v["nodes"]][:3]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def test_no_serious_or_critical_accessibility_violations(live: Live) -> None:
    alice, bob = await live.stack.customer("100.00"), await live.stack.customer("0")
    base = live.stack.base_url
    found: dict[str, list[dict[str, Any]]] = {}
    for phone in (False, True):
        context = await live.context(phone=phone, bypass_csp=True)
        page = await context.new_page()
        size = "phone" if phone else "desk"
        await page.goto(f"{base}/login")
        found[f"login {size}"] = await violations(page)
        await page.goto(f"{base}/no/such/page")
        found[f"error {size}"] = await violations(page)
        await live.login(page, alice)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        found[f"dashboard {size}"] = await violations(page)
        await page.goto(f"{base}/accounts/{alice.account}")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        await live.send(page, bob.username, "abc")
        await expect(page.locator("#amount-error")).to_be_visible()
        found[f"account with errors {size}"] = await violations(page)
        amount = "4.00" if phone else "3.00"
        await live.send(page, bob.username, amount, "tea")
        await expect(page.locator("#form-status")).to_contain_text(f"Done: ${amount}")
        row = page.locator("#history li.row").first
        await live.send(page, bob.username, amount, "tea")
        await expect(page.get_by_test_id("duplicate")).to_be_visible()
        found[f"account live {size}"] = await violations(page)
        await row.get_by_test_id("counterparty").click()
        await expect(page.get_by_test_id("window")).to_be_visible()
        found[f"transfer {size}"] = await violations(page)
        await page.goto(f"{base}/accounts/{alice.account}/statement")
        found[f"statement {size}"] = await violations(page)
        await context.close()

    await admin.set_status(live.stack.store, bob.account, "frozen")
    context = await live.context(bypass_csp=True)
    page = await live.open_account(bob, context)
    found["frozen account"] = await violations(page)
    assert {k: v for k, v in found.items() if v} == {}
