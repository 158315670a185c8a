"""WCAG 2.2 AA with axe-core (vendored: tests/browser/vendor/): no serious or critical
violation on the login, dashboard, account, transfer, statement, webhooks, support,
error, Security and confirm pages, at a desk and on a phone, including an account page
with live changes, the first-payment question, a failed transfer, a transfer awaiting a
passkey and a frozen account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from tests.browser.conftest import Live
from tests.test_confirmations import give_passkey

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
        await page.goto(f"{base}/support")
        found[f"support {size}"] = await violations(page)
        await live.login(page, alice)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        found[f"dashboard {size}"] = await violations(page)
        await page.goto(f"{base}/accounts/{alice.account}")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        await live.send(page, bob.username, "abc")
        await expect(page.locator("#amount-error")).to_be_visible()
        found[f"account with errors {size}"] = await violations(page)
        amount = "4.00" if phone else "3.00"
        if not phone:
            await live.send(page, bob.username, amount, "tea")
            await expect(page.get_by_test_id("confirm-recipient")).to_be_visible()
            found["account asking who it is for"] = await violations(page)
            await page.get_by_role("button", name=f"Yes, send ${amount}").click()
        else:
            await live.send(page, bob.username, amount, "tea")
        await expect(page.locator("#form-status")).to_contain_text(f"Done: ${amount}")
        row = page.locator("#history li.row").first
        await live.send(page, bob.username, amount, "tea")
        await expect(page.get_by_test_id("duplicate")).to_be_visible()
        found[f"account live {size}"] = await violations(page)
        await row.get_by_test_id("counterparty").click()
        await expect(page.get_by_test_id("settled")).to_be_visible()
        await page.get_by_text("Technical details").click()
        found[f"transfer {size}"] = await violations(page)
        await page.goto(f"{base}/accounts/{alice.account}/statement")
        await page.get_by_text("Advanced: verify this statement").click()
        found[f"statement {size}"] = await violations(page)
        await page.goto(f"{base}/webhooks")
        found[f"webhooks {size}"] = await violations(page)
        await context.close()

    # The passkey pages: Security (none yet, then one), an awaiting transfer on the
    # account page, its confirm page and the refusal for want of a passkey.
    carol = await live.stack.customer("5000.00")
    context = await live.context(bypass_csp=True)
    page = await live.open_account(carol, context)
    await live.send(page, bob.username, "1500.00")
    await page.get_by_role("button", name="Yes, send $1,500.00").click()
    await expect(page.locator("#form-error")).to_contain_text("passkey")
    found["account refused for want of a passkey"] = await violations(page)
    await page.goto(f"{base}/security")
    found["security without passkeys"] = await violations(page)
    await give_passkey(live.stack.store, carol)
    await page.goto(f"{base}/security")
    found["security with a passkey"] = await violations(page)
    await page.goto(f"{base}/accounts/{carol.account}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await live.send(page, bob.username, "1500.00")
    await page.get_by_role("button", name="Yes, send $1,500.00").click()
    await expect(page.get_by_test_id("confirm-passkey")).to_be_visible()
    found["account awaiting confirmation"] = await violations(page)
    await (
        page.get_by_test_id("confirm-passkey")
        .get_by_text("Confirm")
        .first.evaluate("(a) => window.location.assign(a.href)")
    )
    await expect(page.get_by_test_id("confirming")).to_be_visible()
    found["confirm page"] = await violations(page)
    await context.close()

    await live.stack.freeze(bob.account)
    context = await live.context(bypass_csp=True)
    page = await live.open_account(bob, context)
    found["frozen account"] = await violations(page)
    assert {k: v for k, v in found.items() if v} == {}
