"""The demo loop in a real browser: ``/demo`` -> Buy -> the sandbox page -> a button -> the
result page, for every button at every provider; the result page and the shop then show the
outcome, the audit trail and the demo merchant's verified notifications."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.demo.conftest import DemoFactory

pytestmark = pytest.mark.browser

#: (provider, button, final status): see the README, "The sandbox"
OUTCOMES = [
    ("stripe", "pay", "COMPLETED"),
    ("stripe", "decline", "FAILED"),
    ("stripe", "cancel", "EXPIRED"),
    ("adyen", "pay", "COMPLETED"),
    ("adyen", "decline", "FAILED"),
    ("adyen", "cancel", "EXPIRED"),
    ("paypal", "pay", "COMPLETED"),
    ("paypal", "decline", "FAILED"),
    ("paypal", "cancel", "CANCELLED"),
]


async def _until(page: Any, check: Any, seconds: float = 10.0) -> None:
    """Reload ``page`` until ``check(page)`` holds (the outcome and notifications arrive by
    webhook, a moment after the redirect)."""
    deadline = time.monotonic() + seconds
    while not await check(page):
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(100)
        await page.reload()


@pytest.mark.parametrize(("provider", "button", "final"), OUTCOMES)
async def test_from_the_demo_shop_to_the_result_page(
    demo_gateway: DemoFactory, browser: Any, provider: str, button: str, final: str
) -> None:
    demo = await demo_gateway(provider)
    page = await browser.new_page()
    await page.goto(f"{demo.base_url}/demo")
    assert await page.title() == "Demo shop"
    assert await page.text_content("#total") == "140.76"
    await page.select_option("#payment-method", "paypal" if provider == "paypal" else "card")
    async with page.expect_navigation(url=f"{demo.base_url}/sandbox/pay/{provider}/**"):
        await page.click("#buy")
    assert "sandbox checkout" in await page.title()

    async with page.expect_navigation(url=lambda url: "/demo/result?" in url):
        await page.click(f"#{button}")
    assert page.url.startswith(f"{demo.base_url}/demo/result?session=")

    async def final_status(page: Any) -> bool:
        return bool(await page.text_content("#status") == final)

    await _until(page, final_status)
    assert await page.text_content("#provider") == provider
    assert await page.text_content("#amount") == "140.76 AUD"
    session_id = await page.text_content("#session-id")
    steps = await page.eval_on_selector_all(
        "tr.transition", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert steps[0][:3] == ["PENDING", steps[0][1], "gateway"]
    assert steps[-1][0] == final
    # the shopper's doing, reported by the provider; at PayPal the gateway's capture call
    # moves the money of an approved order (or learns it was declined)
    by = "gateway:capture" if provider == "paypal" and button != "cancel" else f"webhook:{provider}"
    assert steps[-1][2] == by

    async def notified(page: Any) -> bool:
        rows = await page.query_selector_all(f'tr.notification[data-status="{final}"]')
        return bool(rows)

    await _until(page, notified)
    rows = await page.eval_on_selector_all(
        "tr.notification",
        "rows => rows.map(r => [r.dataset.session, r.dataset.status, r.dataset.verified])",
    )
    assert {r[0] for r in rows} == {session_id}
    assert all(r[2] == "yes" for r in rows)
    assert [rows[0][1], rows[-1][1]] == [final, "PENDING"]  # newest first

    await page.click("#back")  # the shop lists the same notifications
    assert await page.title() == "Demo shop"
    shown = await page.query_selector_all(
        f'tr.notification[data-session="{session_id}"][data-verified="yes"]'
    )
    assert len(shown) == len(rows)
    await page.close()
