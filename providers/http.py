"""The one pooled HTTP client adapters share, and the single place aiohttp errors are mapped
onto the :mod:`providers.base` error tree."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.metrics import PROVIDER_DURATION, PROVIDER_REQUESTS
from providers.base import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = ["RETRY_AFTER_MAX_S", "HttpResult", "ProviderHttp", "new_client_session"]


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


#: the longest ``Retry-After`` honoured: a provider that says "in a year" (or ``1e999``,
#: infinity) must not make the gateway stop retrying a capture it owes
RETRY_AFTER_MAX_S = 3600.0


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds, at most :data:`RETRY_AFTER_MAX_S`; None when absent or not
    a finite number (an HTTP date is not taken either)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


def _outcome(exc: ProviderError | None) -> str:
    """The ``outcome`` label of ``gateway_provider_requests_total`` for a call's result."""
    if exc is None:
        return "ok"
    if isinstance(exc, ProviderTimeout):
        return "timeout"
    if isinstance(exc, ProviderRateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderRejected):
        return "rejected"
    if isinstance(exc, ProviderUnavailable) and exc.status is not None:
        return "server_error"
    return "connection_error"


class ProviderHttp:
    """Sends one request for an adapter and maps every failure exactly once.

    2xx returns an :class:`HttpResult`; everything else raises a ``ProviderError``. Every call
    is counted and timed per provider and ``operation`` (a fixed name such as
    ``create_session``, never a URL); ``request_id`` goes out as ``X-Request-ID``.
    """

    def __init__(
        self,
        provider: str,
        session: aiohttp.ClientSession,
        *,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.provider = provider
        self.session = session
        #: the adapter's credentials: never repeated in an error, whatever the answer echoes
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def _redacted(self, text: str | None) -> str | None:
        """``text`` with every credential of the adapter replaced (errors reach attempts and
        logs: a provider, or whatever answers at its URL, may echo what it was sent)."""
        if text is None:
            return None
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        expected: tuple[int, ...] = (200, 201),
        operation: str = "other",
        request_id: str | None = None,
    ) -> HttpResult:
        if request_id:
            headers = {**(headers or {}), "X-Request-ID": request_id}
        started = time.perf_counter()
        failure: ProviderError | None = None
        try:
            return self.check(await self._send(method, url, timeout, headers, data), expected)
        except ProviderError as exc:
            failure = exc
            raise
        finally:
            PROVIDER_DURATION.labels(self.provider, operation).observe(
                time.perf_counter() - started
            )
            PROVIDER_REQUESTS.labels(self.provider, operation, _outcome(failure)).inc()

    async def _send(
        self,
        method: str,
        url: str,
        timeout: float,
        headers: Mapping[str, str] | None,
        data: bytes | str | None,
    ) -> HttpResult:
        try:
            async with asyncio.timeout(timeout):
                async with self.session.request(
                    method, url, headers=headers, data=data, allow_redirects=False
                ) as response:
                    body = await response.read()
                    return HttpResult(response.status, body, response.headers)
        except TimeoutError:
            raise ProviderTimeout(self.provider, f"no answer within {timeout:.3g}s") from None
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                self.provider, f"connection failed: {type(exc).__name__}"
            ) from exc

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
        raise ProviderRejected(
            self.provider,
            self._redacted(message) or "",
            status,
            self._redacted(code),
            self._redacted(self._issue(result)),
        )

    @staticmethod
    def _issue(result: HttpResult) -> str | None:
        """The finer reason of a refusal, when the body has one: PayPal's ``details[0].issue``,
        Stripe's ``error.param`` (the parameter it refused)."""
        try:
            payload = result.json()
        except orjson.JSONDecodeError:
            return None
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            param = err.get("param")
            return param if isinstance(param, str) and param else None
        details = payload.get("details") if isinstance(payload, dict) else None
        first = details[0] if isinstance(details, list) and details else None
        issue = first.get("issue") if isinstance(first, dict) else None
        return issue if isinstance(issue, str) and issue else None

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
