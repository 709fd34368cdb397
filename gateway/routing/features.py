"""The few facts about a checkout that routing looks at, extracted once per request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from gateway.domain.models import CheckoutRequest

__all__ = ["Features", "extract_features"]

_NO_INFO: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Features:
    """Routing inputs of one request. ``locale`` is normalised to ``ll_RR`` form."""

    merchant: str
    order_reference: str
    currency: str
    payment_method: str
    amount: Decimal
    country: str | None = None
    capture_method: str = "automatic"
    session_type: str = "one_time"
    locale: str | None = None
    item_count: int = 1
    quantity: int = 1
    info: Mapping[str, str] = field(default_factory=lambda: _NO_INFO)

    @property
    def language(self) -> str | None:
        """The language part of the locale (``nl`` for ``nl_BE``)."""
        return self.locale[:2] if self.locale else None


def extract_features(request: CheckoutRequest, merchant_id: str) -> Features:
    """The routing features of ``request`` from ``merchant_id``."""
    locale = request.locale.replace("-", "_") if request.locale else None
    info = request.additionalInformation
    return Features(
        merchant=merchant_id,
        order_reference=request.orderReference,
        currency=request.currency,
        payment_method=request.paymentMethod,
        amount=request.amount.total,
        country=request.billing_country,
        capture_method=request.captureMethod,
        session_type=request.sessionType,
        locale=locale,
        item_count=len(request.lines),
        quantity=sum(item.quantity for item in request.lines),
        info=MappingProxyType(dict(info)) if info else _NO_INFO,
    )
