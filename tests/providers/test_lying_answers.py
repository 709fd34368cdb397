"""A provider that lies in the headers of an answer, over a real socket: whatever it says, the
gateway gets a typed error with sane values, never an exception or an infinite wait."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from providers.base import ProviderRateLimited
from providers.http import ProviderHttp

#: the longest Retry-After the gateway honours (providers.http.RETRY_AFTER_MAX_S)
RETRY_AFTER_MAX_S = 3600.0


async def lying_server(aiohttp_server: Any, retry_after: str) -> str:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=429, headers={"Retry-After": retry_after}, text="slow down")

    app = web.Application()
    app.router.add_post("/v2/checkout/orders/O-1/capture", answer)
    server = await aiohttp_server(app)
    return str(server.make_url("/v2/checkout/orders/O-1/capture"))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1e999", None),  # infinity: the owed capture would never be retried
        ("inf", None),
        ("NaN", None),
        ("-5", 0.0),
        ("99999999999", RETRY_AFTER_MAX_S),  # 3000 years
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("30", 30.0),
    ],
)
async def test_a_lying_retry_after_is_bounded(
    aiohttp_server: Any, header: str, seconds: float | None
) -> None:
    url = await lying_server(aiohttp_server, header)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderRateLimited) as caught:
            await ProviderHttp("paypal", session).request(
                "POST", url, timeout=5, data=b"{}", operation="capture_order"
            )
    assert caught.value.retry_after == seconds
