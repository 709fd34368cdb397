"""The whole loop in a real browser: headless Chromium on the sandbox pay page.

Create a session through the API, open its ``checkoutUrl``, press a button, land on the
merchant's page; then the session's status, the merchant's signed notifications and the
routing statistics must all agree. Needs Debian's ``chromium`` (``.ci/run`` installs it) driven
by playwright (no browser download: ``executable_path``). Under ``CI=true`` a missing browser
fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.api.conftest import headers, seed
from tests.lifecycle.conftest import Env, EnvFactory
from tests.lifecycle.test_cancel_expiry import backdate
from tests.lifecycle.test_loop import payment_counts, read_when, settled, wait_for

pytestmark = pytest.mark.browser


async def _press(browser: Any, env: Env, checkout_url: str, button: str) -> str:
    page = await browser.new_page()
    await page.goto(checkout_url)
    assert "sandbox checkout" in (await page.title())
    async with page.expect_navigation(url=f"{env.receiver.url}/checkout/**"):
        await page.click(f"#{button}")
    outcome = await page.text_content("#outcome")
    await page.close()
    assert outcome is not None
    return outcome


async def test_pay_in_the_browser(lifecycle_env: EnvFactory, browser: Any) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    assert await _press(browser, env, created["checkoutUrl"], "pay") == "success"
    view = await env.read(created["sessionId"])
    assert view["status"] == "COMPLETED"
    events = await settled(env, created["sessionId"], 2)  # signatures verified by the helper
    assert [e["type"] for e in events] == ["payment_session.created", "payment_session.updated"]
    assert events[1]["data"]["payment_session"]["status"] == "COMPLETED"
    ok, fail = await payment_counts(env, "stripe")
    assert (ok, fail) == pytest.approx((1.0, 0.0), abs=1e-3)


async def test_paypal_in_the_browser_is_captured_by_the_gateway(
    lifecycle_env: EnvFactory, browser: Any
) -> None:
    """PayPal's Pay only approves the order; the gateway's capture moves the money."""
    env = await lifecycle_env("paypal")
    created = await env.create(paymentMethod="paypal")
    assert await _press(browser, env, created["checkoutUrl"], "pay") == "success"
    view = await read_when(env, created["sessionId"], "COMPLETED")
    assert [t["source"] for t in view["transitions"]] == [
        "gateway",
        "webhook:paypal",
        "gateway:capture",
    ]
    events = await settled(env, created["sessionId"], 3)
    payloads = sorted((e["data"]["payment_session"] for e in events), key=lambda p: p["version"])
    assert [p["status"] for p in payloads] == ["PENDING", "PROCESSING", "COMPLETED"]
    assert payloads[-1]["paymentId"] == view["paymentId"]
    ok, fail = await payment_counts(env, "paypal")
    assert (ok, fail) == pytest.approx((1.0, 0.0), abs=1e-3)


async def test_saved_card_in_the_browser(lifecycle_env: EnvFactory, browser: Any) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create(sessionType="first_in_series")
    assert await _press(browser, env, created["checkoutUrl"], "pay") == "success"
    events = await settled(env, created["sessionId"], 2)
    payload = events[1]["data"]["payment_session"]
    assert payload["customerId"].startswith("cus_")
    assert payload["paymentMethodId"].startswith("pm_")
    assert payload["provider"] == "stripe"


async def _post(env: Env, path: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
    response = await env.client.post(path, data=json.dumps(body), headers=headers(key))
    return response.status, await response.json()


async def test_manual_capture_and_refund_in_the_browser(
    lifecycle_env: EnvFactory, browser: Any
) -> None:
    """Pay only authorizes; the merchant's capture moves the money, a refund gives part back and
    Stripe's webhook settles it."""
    env = await lifecycle_env("stripe")
    created = await env.create(captureMethod="manual")
    assert await _press(browser, env, created["checkoutUrl"], "pay") == "success"
    session_id = created["sessionId"]
    authorized = await read_when(env, session_id, "AUTHORIZED")
    assert authorized["amountCaptured"] == "0.00"
    path = f"/api/v1/sessions/{session_id}"
    status, captured = await _post(env, f"{path}/capture", {"amount": "100.00"}, "cap-1")
    assert status == 200, captured
    assert (captured["status"], captured["amountCaptured"]) == ("COMPLETED", "100.00")
    status, refund = await _post(
        env, f"{path}/refunds", {"amount": "40.00", "reason": "requested_by_customer"}, "rf-1"
    )
    assert status == 201, refund
    assert (refund["amount"], refund["currency"]) == ("40.00", "AUD")

    async def refund_status() -> str:
        response = await env.client.get(f"{path}/refunds", headers=headers(None))
        listed = (await response.json())["data"]
        assert [r["refundId"] for r in listed] == [refund["refundId"]]
        return str(listed[0]["status"])

    for _ in range(100):  # the sandbox's refund webhook moves it
        if await refund_status() == "SUCCEEDED":
            break
        await asyncio.sleep(0.05)
    assert await refund_status() == "SUCCEEDED"
    view = await env.read(session_id)
    assert (view["status"], view["amountCaptured"], view["amountRefunded"]) == (
        "COMPLETED",
        "100.00",
        "40.00",
    )
    events = await wait_for(
        lambda: [e for e in env.receiver.of_session(session_id) if e["type"] == "refund.updated"]
    )
    assert events[0]["data"]["refund"]["status"] == "SUCCEEDED"
    # Stripe's checkout.session.completed, then its PaymentIntent's amount_capturable_updated
    assert [(t["status"], t["source"]) for t in view["transitions"]] == [
        ("PENDING", "gateway"),
        ("PROCESSING", "webhook:stripe"),
        ("AUTHORIZED", "webhook:stripe"),
        ("COMPLETED", "merchant"),
    ]
    updates = sorted(
        (e["data"]["payment_session"] for e in env.receiver.of_session(session_id)),
        key=lambda p: p["version"],
    )
    assert [p["status"] for p in updates][:4] == [
        "PENDING",
        "PROCESSING",
        "AUTHORIZED",
        "COMPLETED",
    ]


async def test_setup_session_saved_in_the_browser(lifecycle_env: EnvFactory, browser: Any) -> None:
    """A setup session's page offers Save (nothing is charged); saving completes the session
    with the saved method, which then pays a next payment with no customer present."""
    env = await lifecycle_env("stripe")
    body = seed(
        sessionType="setup",
        orderReference="SETUP-cust-42",
        amount={"total": 0},
        customerReference="cust-42",
        redirectUrls={
            "success": f"{env.receiver.url}/checkout/success",
            "failure": f"{env.receiver.url}/checkout/failure",
        },
    )
    del body["orderItems"]
    status, created = await _post(env, "/api/v1/sessions", body, "setup-1")
    assert status == 201, created
    page = await browser.new_page()
    await page.goto(created["checkoutUrl"])
    assert (await page.text_content("#pay") or "").strip() == "Save"
    assert (await page.text_content("#amount") or "").split() == ["0.00", "AUD"]
    await page.close()
    assert await _press(browser, env, created["checkoutUrl"], "pay") == "success"
    view = await read_when(env, created["sessionId"], "COMPLETED")
    assert view["customerId"].startswith("cus_")
    assert view["paymentMethodId"].startswith("pm_")
    assert view["amountCaptured"] == "0.00"
    events = await settled(env, created["sessionId"], 2)
    payload = max((e["data"]["payment_session"] for e in events), key=lambda p: p["version"])
    assert (payload["status"], payload["paymentMethodId"]) == ("COMPLETED", view["paymentMethodId"])
    series = seed(sessionType="next_in_series", mandateSessionId=created["sessionId"])
    del series["redirectUrls"]
    status, charged = await _post(env, "/api/v1/sessions", series, "next-1")
    assert status == 201, charged
    assert (charged["checkoutUrl"], charged["status"]) == (None, "COMPLETED")


async def test_decline_in_the_browser(lifecycle_env: EnvFactory, browser: Any) -> None:
    env = await lifecycle_env("stripe")
    created = await env.create()
    assert await _press(browser, env, created["checkoutUrl"], "decline") == "failure"
    assert (await env.read(created["sessionId"]))["status"] == "FAILED"
    events = await settled(env, created["sessionId"], 2)
    assert events[1]["data"]["payment_session"]["status"] == "FAILED"
    ok, fail = await payment_counts(env, "stripe")
    assert (ok, fail) == pytest.approx((0.0, 1.0), abs=1e-3)


async def test_expired_session_in_the_browser(lifecycle_env: EnvFactory, browser: Any) -> None:
    env = await lifecycle_env("stripe")  # the sweeper runs every 0.1 s
    created = await env.create()
    await backdate(env, created["sessionId"])
    events = await wait_for(
        lambda: [
            e
            for e in env.receiver.of_session(created["sessionId"])
            if e["data"]["payment_session"]["status"] == "EXPIRED"
        ]
    )
    assert events[0]["type"] == "payment_session.updated"
    page = await browser.new_page()
    response = await page.goto(created["checkoutUrl"])
    assert response is not None
    assert response.status == 410  # the sweeper expired it at Stripe too
    assert await page.is_visible("#expired")
    assert not await page.is_visible("#pay")
    await page.close()
    assert (await env.read(created["sessionId"]))["status"] == "EXPIRED"
    assert await payment_counts(env, "stripe") == (0.0, 0.0)
