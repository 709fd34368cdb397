"""The one pooled HTTP client adapters share, and the single place aiohttp errors are mapped
onto the :mod:`providers.base` error tree."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from providers.base import (
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = ["HttpResult", "ProviderHttp", "new_client_session"]


def new_client_session(*, limit: int = 200) -> aiohttp.ClientSession:
    """A pooled client session for all adapters (keep-alive, bounded connections)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        raise_for_status=False,
        auto_decompress=True,
    )


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class ProviderHttp:
    """Sends one request for an adapter and maps every failure exactly once.

    2xx returns an :class:`HttpResult`; everything else raises a ``ProviderError``.
    """

    def __init__(self, provider: str, session: aiohttp.ClientSession) -> None:
        self.provider = provider
        self.session = session

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        expected: tuple[int, ...] = (200, 201),
    ) -> HttpResult:
        try:
            async with asyncio.timeout(timeout):
                async with self.session.request(
                    method, url, headers=headers, data=data, allow_redirects=False
                ) as response:
                    body = await response.read()
                    result = HttpResult(response.status, body, response.headers)
        except TimeoutError:
            raise ProviderTimeout(self.provider, f"no answer within {timeout:.3g}s") from None
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                self.provider, f"connection failed: {type(exc).__name__}"
            ) from exc
        return self.check(result, expected)

    def check(self, result: HttpResult, expected: tuple[int, ...]) -> HttpResult:
        status = result.status
        if status in expected or 200 <= status < 300:
            return result
        if status == 429:
            raise ProviderRateLimited(
                self.provider, "rate limited", _retry_after(result.headers.get("Retry-After"))
            )
        if status >= 500:
            raise ProviderUnavailable(self.provider, f"HTTP {status}", status)
        code, message = self._error_detail(result)
        raise ProviderRejected(self.provider, message, status, code)

    @staticmethod
    def _error_detail(result: HttpResult) -> tuple[str | None, str]:
        try:
            payload = result.json()
        except orjson.JSONDecodeError:
            return None, f"HTTP {result.status}"
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):  # Stripe
                return err.get("code") or err.get("type"), str(err.get("message", ""))
            if "errorCode" in payload:  # Adyen
                return str(payload["errorCode"]), str(payload.get("message", ""))
            if isinstance(err, str):  # OAuth2 token endpoints (PayPal /v1/oauth2/token)
                return err, str(payload.get("error_description", ""))
            if "name" in payload:  # PayPal
                return str(payload["name"]), str(payload.get("message", ""))
        return None, f"HTTP {result.status}"
