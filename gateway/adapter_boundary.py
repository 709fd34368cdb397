"""The one boundary where the gateway calls into a provider adapter.

Whatever an adapter raises leaves this boundary as a :class:`providers.base.ProviderError`: the
adapter's own typed errors as they are, any other exception (a transformer's ``TypeError``, a
parser's ``KeyError``: a bug on our side of the seam) as an :class:`providers.base.AdapterFault`
naming only its type. An adapter fault is logged as an error by exception type only (its message
and traceback may quote request data) and counted in ``gateway_adapter_faults_total``. Every
retryable failure counts against the provider's circuit, a success closes a half-open one.

Every adapter call goes through :meth:`AdapterBoundary.call`: session creation
(:mod:`gateway.attempts`), the merchant's cancel and the expiry sweeper's
(:mod:`gateway.lifecycle`), the completion of an approved payment (:mod:`gateway.completion`)
and the expiry of a failover's orphans (:mod:`gateway.orphans`). Webhook parsing types its
exceptions with :func:`typed` in :mod:`gateway.api.webhooks` (counted, but not against the
circuit: anyone can send a webhook).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.circuit import CircuitBreakers
from gateway.metrics import ADAPTER_FAULTS
from providers.base import AdapterFault, ProviderError, adapter_fault

__all__ = ["AdapterBoundary", "typed"]

log = logging.getLogger("gateway.adapters")

T = TypeVar("T")


def typed(provider: str, operation: str, raised: BaseException) -> ProviderError:
    """``raised`` (out of ``provider``'s adapter during ``operation``) as a ProviderError; an
    adapter fault is logged by type and counted."""
    exc = adapter_fault(provider, raised)
    if isinstance(exc, AdapterFault):
        ADAPTER_FAULTS.labels(provider, operation).inc()
        log.error(
            "adapter raised an unexpected exception in %s",
            operation,
            extra={"provider": provider, "exception_type": exc.exception_type},
        )
    return exc


class AdapterBoundary:
    """Calls adapters; types what they raise and keeps their circuits informed."""

    def __init__(self, circuits: CircuitBreakers) -> None:
        self.circuits = circuits

    async def call(self, provider: str, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` (one call into ``provider``'s adapter, named ``operation``: a fixed
        vocabulary such as ``create_session``). Raises only :class:`ProviderError`."""
        try:
            result = await call()
        except Exception as raised:  # the boundary: whatever the adapter raises is typed here
            exc = typed(provider, operation, raised)
            if exc.retryable:
                await self.circuits.failure(provider)
            raise exc from None
        await self.circuits.success(provider)
        return result
