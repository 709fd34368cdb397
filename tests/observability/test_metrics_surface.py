"""/metrics holds what dashboards and alerts read: no `*_created` timestamp series, and no 404
for the favicon every browser visit of the pay page would ask for."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import SEED, GatewayFactory, headers


async def test_no_created_series_are_exported(gateway: GatewayFactory) -> None:
    client = await gateway()
    created = await client.post("/api/v1/sessions", json=SEED, headers=headers("metrics-1"))
    assert created.status == 201
    text = await (await client.get("/metrics")).text()
    names = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    assert "gateway_sessions_created_total" in names
    assert "gateway_http_request_duration_seconds_bucket" in names
    assert sorted(n for n in names if n.endswith("_created")) == []


async def test_the_pay_page_needs_no_favicon_request(gateway: GatewayFactory) -> None:
    client = await gateway()
    created = await client.post("/api/v1/sessions", json=SEED, headers=headers("metrics-2"))
    url = (await created.json())["checkoutUrl"]
    async with aiohttp.ClientSession() as http, http.get(url) as page:
        assert page.status == 200
        # an inline empty icon: browsers do not fetch /favicon.ico (a 404 on route="unmatched")
        assert '<link rel="icon" href="data:,">' in await page.text()
    shop = await client.get("/demo")
    assert shop.status == 200
    assert '<link rel="icon" href="data:,">' in await shop.text()
