"""The demo shop, the result page and the demo merchant's notifications, over real sockets
(the browser drives the same pages in ``tests/e2e/test_demo_shop.py``)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.appkeys import MERCHANTS
from gateway.cli import example_curl
from gateway.demo.links import demo_key, sign_session
from gateway.idempotency import session_id_for
from gateway.notifications.signing import signature_header
from gateway.settings import Settings
from tests.api.conftest import headers
from tests.api.test_startup import EVERY_PROVIDER, production
from tests.demo.conftest import Demo, DemoFactory

DEMO_PATHS = [
    ("GET", "/demo"),
    ("POST", "/demo/buy"),
    ("GET", "/demo/result?session=x&sig=y"),
    ("POST", "/demo/notifications"),
]


@pytest.mark.parametrize(("method", "path"), DEMO_PATHS)
async def test_production_does_not_route_the_demo(
    aiohttp_client: Any, method: str, path: str
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(production(**EVERY_PROVIDER)))
    response = await client.request(method, path)
    assert response.status == 404
    assert (await response.json())["error"] == "Not Found"
    assert "demo-merchant" not in client.app[MERCHANTS].webhooks


async def buy(demo: Demo, method: str = "card") -> str:
    """Press Buy; the checkoutUrl the shop sends the browser to."""
    response = await demo.client.post(
        "/demo/buy", data={"paymentMethod": method}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    return response.headers["Location"]


async def press(checkout_url: str, action: str) -> str:
    """Press a sandbox button as a browser does; the URL the customer lands on."""
    async with (
        aiohttp.ClientSession() as browser,
        browser.post(f"{checkout_url}/{action}") as landed,
    ):
        assert landed.status == 200, await landed.text()
        return str(landed.url)


async def test_buy_creates_a_demo_merchant_session_through_the_api(
    demo_gateway: DemoFactory,
) -> None:
    demo = await demo_gateway("stripe")
    checkout_url = await buy(demo)
    assert checkout_url.startswith(f"{demo.base_url}/sandbox/pay/stripe/cs_test_")
    landed = await press(checkout_url, "pay")
    assert landed.startswith(f"{demo.base_url}/demo/result?")
    session_id = parse_qs(urlsplit(landed).query)["session"][0]
    # the session is the demo merchant's, created with the seed's basket
    response = await demo.client.get(
        f"/api/v1/sessions/{session_id}", headers=headers(None, merchant="demo-merchant")
    )
    assert response.status == 200, await response.text()
    view = await response.json()
    assert view["status"] == "COMPLETED"
    assert view["orderReference"].startswith("DEMO-")
    assert view["amount"] == {"total": "140.76", "shipping": "9.95", "tax": "11.81"}


async def test_the_result_page_needs_the_sessions_signed_link(demo_gateway: DemoFactory) -> None:
    demo = await demo_gateway("stripe")
    landed = await press(await buy(demo), "decline")
    query = parse_qs(urlsplit(landed).query)
    session_id, sig = query["session"][0], query["sig"][0]
    page = await demo.client.get(f"/demo/result?session={session_id}&sig={sig}")
    assert page.status == 200
    text = await page.text()
    assert 'id="status">FAILED<' in text
    assert 'id="provider">stripe<' in text
    assert "140.76 AUD" in text
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for forged in (flipped, "", sign_session(b"x" * 32, session_id)):
        response = await demo.client.get(f"/demo/result?session={session_id}&sig={forged}")
        assert response.status == 404
        assert (await response.json())["message"] == "Session not found"
    assert (await demo.client.get(f"/demo/result?session={session_id}")).status == 404


async def test_another_merchants_session_is_not_shown_without_its_link(
    demo_gateway: DemoFactory,
) -> None:
    demo = await demo_gateway("stripe")
    body = orjson.loads(example_curl(demo.settings).split("-d '", 1)[1].rstrip("'"))
    created = await demo.client.post(
        "/api/v1/sessions", json=body, headers=headers("other-key", merchant="merchant-1")
    )
    assert created.status == 201
    session_id = (await created.json())["sessionId"]
    response = await demo.client.get(f"/demo/result?session={session_id}&sig=")
    assert response.status == 404


async def _notifications(demo: Demo, session_id: str, count: int) -> list[dict[str, str]]:
    deadline = time.monotonic() + 5
    while True:
        page = await (await demo.client.get("/demo")).text()
        rows = [
            dict(zip(("session", "status", "verified"), found, strict=True))
            for found in re.findall(
                r'data-session="([^"]*)" data-status="([^"]*)" data-verified="([^"]*)"', page
            )
        ]
        mine = [r for r in rows if r["session"] == session_id]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.05)


async def test_the_shop_shows_the_signed_notifications_it_received(
    demo_gateway: DemoFactory,
) -> None:
    demo = await demo_gateway("adyen")
    landed = await press(await buy(demo), "pay")
    session_id = parse_qs(urlsplit(landed).query)["session"][0]
    rows = await _notifications(demo, session_id, 2)
    assert [(r["status"], r["verified"]) for r in rows] == [
        ("COMPLETED", "yes"),
        ("PENDING", "yes"),
    ]
    # each row opens the session's result page (the same signed link the customer came back to)
    shop = await (await demo.client.get("/demo")).text()
    assert shop.count(f'href="{landed.replace("&", "&amp;")}"') == 2


async def test_a_notification_with_a_bad_signature_is_refused_and_shown_as_such(
    demo_gateway: DemoFactory,
) -> None:
    demo = await demo_gateway("stripe")
    body = orjson.dumps(
        {
            "type": "payment_session.updated",
            "data": {"payment_session": {"sessionId": "forged-1", "status": "COMPLETED"}},
        }
    )
    forged = signature_header(["not-the-demo-secret-0123456789"], int(time.time()), body)
    response = await demo.client.post(
        "/demo/notifications", data=body, headers={"Gateway-Signature": forged}
    )
    assert response.status == 401
    good_secret = demo.client.app[MERCHANTS].webhooks["demo-merchant"].secrets[0]
    signed = signature_header([good_secret], int(time.time()), body.replace(b"-1", b"-2"))
    response = await demo.client.post(
        "/demo/notifications",
        data=body.replace(b"-1", b"-2"),
        headers={"Gateway-Signature": signed},
    )
    assert response.status == 200
    assert await _notifications(demo, "forged-1", 1) == [
        {"session": "forged-1", "status": "COMPLETED", "verified": "no"}
    ]
    assert (await _notifications(demo, "forged-2", 1))[0]["verified"] == "yes"


def test_the_printed_curl_returns_to_the_sessions_result_page() -> None:
    settings = Settings(_env_file=None, jwt_secret="s" * 40, port=8123)  # type: ignore[call-arg]
    curl = example_curl(settings)
    key = re.search(r"Idempotency-Key: ([0-9a-f-]+)", curl)
    assert key is not None
    body = orjson.loads(curl.split("-d '", 1)[1].rstrip("'"))
    session_id = session_id_for("demo-merchant", key.group(1))
    expected = (
        f"http://127.0.0.1:8123/demo/result?session={session_id}"
        f"&sig={sign_session(demo_key(settings), session_id)}"
    )
    assert body["redirectUrls"] == {"success": expected, "failure": expected}
    amounts = json.loads(curl.split('"amount":', 1)[1].split("}", 1)[0] + "}", parse_float=Decimal)
    assert amounts == {
        "total": Decimal("140.76"),
        "shipping": Decimal("9.95"),
        "tax": Decimal("11.81"),
    }


def test_the_printed_curl_in_production_keeps_the_merchants_urls() -> None:
    curl = example_curl(production(**EVERY_PROVIDER))
    body = orjson.loads(curl.split("-d '", 1)[1].rstrip("'"))
    assert body["redirectUrls"]["success"] == "https://merchant.example.com/checkout/success"


async def test_a_configured_demo_merchant_webhook_wins(
    demo_gateway: DemoFactory, tmp_path: Any
) -> None:
    merchants = tmp_path / "own-merchants.yaml"
    merchants.write_text(
        "merchants:\n  demo-merchant:\n    webhook:\n"
        "      url: https://shop.example/hooks\n      secret: own-secret-0123456789-abcdef\n"
    )
    demo = await demo_gateway("stripe", merchants_path=merchants)
    hook = demo.client.app[MERCHANTS].webhooks["demo-merchant"]
    assert (hook.url, hook.secrets) == (
        "https://shop.example/hooks",
        ("own-secret-0123456789-abcdef",),
    )
