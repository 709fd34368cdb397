"""The calls after the checkout against a provider that lies (issue 13), over real sockets.

A scripted provider answers each capture, charge, void or refund with whatever the test says:
success for another payment, amount or currency, amounts that are negative, fractional or in
a currency nobody knows, ids that would walk out of the URL path. Whatever it says, an adapter
answers an outcome that never reads COMPLETED when the answer is ambiguous, or raises the
:class:`providers.base.ProviderError` tree; never a ``KeyError``/``ValueError``/``OverflowError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.domain.session import SessionStatus
from gateway.settings import SANDBOX_SECRETS, ProviderConfig
from providers.adyen.adapter import AdyenAdapter
from providers.base import (
    FlowNotSupported,
    PaymentOutcome,
    PaymentReference,
    ProviderError,
    ProviderUnavailable,
)
from providers.paypal.adapter import PayPalAdapter
from providers.stripe.adapter import StripeAdapter
from tests.providers.test_stripe_payments import charge

Answer = tuple[int, Any]


@dataclass
class LyingProvider:
    """Answers every call with the scripted ``(status, JSON)``; records the paths asked."""

    answer: Answer = (200, {})
    paths: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.paths.append(request.raw_path)
        for name in ("Idempotency-Key", "PayPal-Request-Id"):
            if name in request.headers:
                self.keys.append(request.headers[name])
        if request.path == "/v1/oauth2/token":  # PayPal's token, always honest
            token = {"access_token": "tok", "token_type": "Bearer", "expires_in": 3600}
            return web.json_response(token)
        status, body = self.answer
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(status=status, body=raw, content_type="application/json")


@pytest.fixture
async def liar(aiohttp_server: Any) -> LyingProvider:
    provider = LyingProvider()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    server = await aiohttp_server(app)
    provider.base_url = str(server.make_url("")).rstrip("/")
    return provider


def config(name: str, liar: LyingProvider) -> ProviderConfig:
    secrets = SANDBOX_SECRETS[name]
    return ProviderConfig(
        name=name,
        base_url=liar.base_url,
        api_key=secrets.get("api_key"),
        merchant_account=secrets.get("merchant_account"),
        client_id=secrets.get("client_id"),
        client_secret=secrets.get("client_secret"),
        webhook_secret=secrets.get("webhook_secret"),
        hmac_key=secrets.get("hmac_key"),
        webhook_id=secrets.get("webhook_id"),
        sandbox=True,
    )


def payment(payment_id: str, *, capture_id: str | None = None) -> PaymentReference:
    return PaymentReference(
        session_reference=payment_id,
        payment_id=payment_id,
        capture_id=capture_id,
        currency="AUD",
        amount=Decimal("140.76"),
        session_id="ses_attack",
    )


Call = Callable[[aiohttp.ClientSession, LyingProvider], Awaitable[PaymentOutcome]]


async def stripe_capture(http: aiohttp.ClientSession, liar: LyingProvider) -> PaymentOutcome:
    adapter = StripeAdapter(config("stripe", liar), http)
    return await adapter.capture_payment(
        payment("pi_asked"), Decimal("140.76"), idempotency_key="k1", timeout=5
    )


async def stripe_charge(http: aiohttp.ClientSession, liar: LyingProvider) -> PaymentOutcome:
    adapter = StripeAdapter(config("stripe", liar), http)
    return await adapter.charge_saved(charge("cus_1", "pm_1"), timeout=5)


async def paypal_capture(http: aiohttp.ClientSession, liar: LyingProvider) -> PaymentOutcome:
    adapter = PayPalAdapter(config("paypal", liar), http)
    return await adapter.capture_payment(
        payment("AUTH-ASKED"), Decimal("140.76"), idempotency_key="k1", timeout=5
    )


def _intent(**changes: Any) -> dict[str, Any]:
    intent: dict[str, Any] = {
        "id": "pi_asked",
        "object": "payment_intent",
        "status": "succeeded",
        "amount": 14076,
        "amount_received": 14076,
        "currency": "aud",
    }
    intent.update(changes)
    return intent


def _paypal_capture(**changes: Any) -> dict[str, Any]:
    capture: dict[str, Any] = {
        "id": "CAP-1",
        "status": "COMPLETED",
        "amount": {"currency_code": "AUD", "value": "140.76"},
    }
    capture.update(changes)
    return capture


# success that is not the success asked for ----------------------------------------------------


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (stripe_capture, _intent(id="pi_someone_else")),
        (stripe_capture, _intent(currency="jpy")),
        (stripe_capture, _intent(amount_received=1407600)),
        (stripe_capture, _intent(amount_received=-14076)),
        (paypal_capture, _paypal_capture(amount={"currency_code": "JPY", "value": "140.76"})),
        (paypal_capture, _paypal_capture(amount={"currency_code": "AUD", "value": "14076"})),
        (stripe_capture, _intent(amount_received=14076.0)),
        (stripe_charge, _intent(amount_received="14076")),
        (paypal_capture, _paypal_capture(amount={"currency_code": "AUD", "value": 140.76})),
        (paypal_capture, _paypal_capture(amount={"currency_code": "AUD", "value": "1.4076e2"})),
    ],
    ids=[
        "stripe-capture-other-intent",
        "stripe-capture-other-currency",
        "stripe-capture-100x-amount",
        "stripe-capture-negative",
        "paypal-capture-other-currency",
        "paypal-capture-100x-amount",
        "stripe-capture-float",
        "stripe-charge-string",
        "paypal-capture-float",
        "paypal-capture-exponent",
    ],
)
async def test_success_for_something_else_is_never_completed(
    http: aiohttp.ClientSession, liar: LyingProvider, call: Call, answer: Any
) -> None:
    liar.answer = (200, answer)
    try:
        outcome = await call(http, liar)
    except ProviderError:
        return  # an error is a fine answer to a lie
    assert outcome.status is not SessionStatus.COMPLETED, outcome


@pytest.mark.parametrize(
    ("answer", "reported"),
    [
        (_intent(currency="usd"), (Decimal("140.76"), "USD")),
        (
            _intent(amount_received=2**64 - 1),
            (Decimal("184467440737095516.15"), "AUD"),
        ),
    ],
)
async def test_a_charge_of_another_amount_or_currency_is_reported_as_it_is(
    http: aiohttp.ClientSession, liar: LyingProvider, answer: Any, reported: Any
) -> None:
    """The gateway reconciles a charge's outcome (``gateway.series.charge_mismatch``): it must
    see exactly what the provider reported."""
    liar.answer = (200, answer)
    outcome = await stripe_charge(http, liar)
    assert (outcome.amount, outcome.currency) == reported


async def test_a_charge_amount_beyond_64_bits_is_never_completed(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    """orjson reads an integer beyond 64 bits as a float: unreadable, never a payment."""
    body = orjson.dumps(_intent(amount_received=0)).replace(
        b'"amount_received":0', b'"amount_received":999999999999999999999'
    )
    liar.answer = (200, body)
    outcome = await stripe_charge(http, liar)
    assert outcome.status is SessionStatus.PROCESSING
    assert outcome.amount is None


async def test_stripe_charge_answer_for_the_asked_payment_is_completed(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    """The checks do not refuse the truth: the same answer, honest, completes."""
    liar.answer = (200, _intent(id="pi_new"))
    outcome = await stripe_charge(http, liar)
    assert outcome.status is SessionStatus.COMPLETED
    assert (outcome.amount, outcome.currency) == (Decimal("140.76"), "AUD")


# unreadable answers ----------------------------------------------------------------------------


def _adyen_charge_answer(amount: Any) -> dict[str, Any]:
    return {"pspReference": "PSP1", "resultCode": "Authorised", "amount": amount}


@pytest.mark.parametrize(
    "amount",
    [
        {"currency": "usd", "value": 14076},  # a code Adyen never sends: not ISO 4217
        {"currency": "XXX", "value": 14076},  # ISO code without a minor unit
        {"currency": "", "value": 14076},
        {"currency": "AUD", "value": -14076},
        {"currency": "AUD", "value": 140.76},
        {"currency": "AUD", "value": "14076"},
    ],
)
async def test_adyen_charge_with_an_unreadable_amount_is_an_outcome(
    http: aiohttp.ClientSession, liar: LyingProvider, amount: Any
) -> None:
    liar.answer = (200, _adyen_charge_answer(amount))
    adapter = AdyenAdapter(config("adyen", liar), http)
    try:
        outcome = await adapter.charge_saved(charge("shopper-1", "TOKEN1"), timeout=5)
    except ProviderError:
        return
    assert outcome.status is not SessionStatus.COMPLETED or outcome.amount == Decimal("140.76")
    assert outcome.amount is None or outcome.amount > 0


@pytest.mark.parametrize(
    "created",
    [10**12 - 1, -(10**12)],  # far beyond datetime's years
)
async def test_stripe_webhook_with_an_absurd_time_is_parsed(created: int) -> None:
    """``created`` (signed by Stripe) beyond year 9999 must not crash the parser."""
    from providers.stripe.webhooks import events_from_payload

    payload = {
        "id": "evt_1",
        "type": "refund.updated",
        "created": created,
        "data": {"object": {"object": "refund", "id": "re_1", "status": "succeeded"}},
    }
    [event] = events_from_payload(payload)
    assert event.occurred_at is None


async def test_stripe_session_with_an_absurd_expiry_is_parsed(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    from tests.providers.hosted_inputs import checkout_input, seed_request

    liar.answer = (
        200,
        {"id": "cs_1", "url": "https://x.test/pay", "status": "open", "expires_at": 10**15},
    )
    adapter = StripeAdapter(config("stripe", liar), http)
    created = await adapter.create_session(checkout_input(seed_request()), timeout=5)
    assert created.reference == "cs_1"
    assert created.expires_at is None


# ids that walk out of their path segment ---------------------------------------------------


@pytest.mark.parametrize("bad_id", ["..", "."])
@pytest.mark.parametrize("provider", ["adyen", "paypal"])
async def test_dot_segment_ids_never_reach_another_path(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str, bad_id: str
) -> None:
    adapter: AdyenAdapter | PayPalAdapter
    if provider == "adyen":
        adapter = AdyenAdapter(config("adyen", liar), http)
    else:
        adapter = PayPalAdapter(config("paypal", liar), http)
    liar.answer = (200, {"status": "received", "pspReference": "X", "id": "X"})
    with pytest.raises(FlowNotSupported):
        await adapter.capture_payment(
            payment(bad_id), Decimal("1.00"), idempotency_key="k", timeout=5
        )
    with pytest.raises(FlowNotSupported):
        await adapter.void_payment(payment(bad_id), idempotency_key="k", timeout=5)
    assert all("/captures" not in p and "/void" not in p for p in liar.paths), liar.paths


@pytest.mark.parametrize("reference", ["..", "."])
async def test_stripe_cancel_of_a_dot_segment_reference_is_refused(
    http: aiohttp.ClientSession, liar: LyingProvider, reference: str
) -> None:
    adapter = StripeAdapter(config("stripe", liar), http)
    with pytest.raises(FlowNotSupported):
        await adapter.cancel_session(reference, timeout=5)
    assert liar.paths == []


async def test_a_non_json_capture_answer_is_unavailable(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    liar.answer = (200, b"<html>ok</html>")
    with pytest.raises(ProviderUnavailable):
        await stripe_capture(http, liar)
    with pytest.raises(ProviderUnavailable):
        await paypal_capture(http, liar)


# refund webhooks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"), [(-500, "aud"), (5.0, "aud"), ("500", "aud"), (500, "zzz"), (500, 5)]
)
def test_stripe_refund_event_with_an_unreadable_amount_moves_nothing(
    amount: Any, currency: Any
) -> None:
    """The gateway applies a refund update without an amount unchecked: an amount that is there
    but cannot be read must not pass as "none", so the update stays PENDING (moves nothing)."""
    from gateway.domain.session import RefundStatus
    from providers.stripe.webhooks import events_from_payload

    refund = {"object": "refund", "id": "re_1", "status": "succeeded", "amount": amount}
    refund["currency"] = currency
    payload = {"id": "evt_1", "type": "refund.updated", "data": {"object": refund}}
    [event] = events_from_payload(payload)
    assert event.refund is not None
    assert event.refund.amount is None
    assert event.amount is None
    assert event.refund.status is RefundStatus.PENDING


def test_stripe_charge_refunded_lists_an_unreadable_refund_as_pending() -> None:
    from gateway.domain.session import RefundStatus
    from providers.stripe.webhooks import events_from_payload

    refunds = [
        {"id": "re_1", "status": "succeeded", "amount": 500, "currency": "aud"},
        {"id": "re_2", "status": "succeeded", "amount": -500, "currency": "aud"},
    ]
    charge = {"object": "charge", "id": "ch_1", "refunds": {"data": refunds}}
    payload = {"id": "evt_1", "type": "charge.refunded", "data": {"object": charge}}
    first, second = events_from_payload(payload)
    assert first.refund is not None
    assert second.refund is not None
    assert (first.refund.status, first.refund.amount) == (RefundStatus.SUCCEEDED, Decimal("5"))
    assert (second.refund.status, second.refund.amount) == (RefundStatus.PENDING, None)


@pytest.mark.parametrize("value", [-14076, 2**70, 14076, 140.76, "14076", True, None])
def test_adyen_refund_notification_amount_is_exact_or_none(value: Any) -> None:
    from providers.adyen.webhooks import event_from_item

    item = {
        "eventCode": "REFUND",
        "success": "true",
        "pspReference": "RF1",
        "originalReference": "PSP1",
        "merchantReference": "ses_1:ref_1",
        "amount": {"currency": "AUD", "value": value},
    }
    from gateway.domain.session import RefundStatus

    event = event_from_item(item)
    assert event.refund is not None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        assert event.refund.amount == Decimal(value).scaleb(-2)
        assert event.refund.status is RefundStatus.SUCCEEDED
    else:
        assert event.refund.amount is None
        assert event.amount is None
        assert event.refund.status is RefundStatus.PENDING  # moves nothing unchecked


def _paypal_refund_event(**resource_changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "id": "RF-1",
        "status": "COMPLETED",
        "amount": {"currency_code": "AUD", "value": "10.00"},
        "links": [
            {"href": "https://api.paypal.test/v2/payments/refunds/RF-1", "rel": "self"},
            {"href": "https://api.paypal.test/v2/payments/captures/CAP-9", "rel": "up"},
        ],
    }
    resource.update(resource_changes)
    return {"id": "WH-1", "event_type": "PAYMENT.CAPTURE.REFUNDED", "resource": resource}


def test_paypal_foreign_refund_names_the_capture_it_refunds() -> None:
    """A refund made in PayPal's dashboard carries neither the gateway's refund id nor its
    session id: the capture it refunds is all that ties it to a session."""
    from providers.paypal.webhooks import event_from_paypal

    event = event_from_paypal(_paypal_refund_event())
    assert event.refund is not None
    assert (event.session_id, event.refund.refund_id) == (None, None)
    assert event.capture_id == "CAP-9"


@pytest.mark.parametrize(
    "links",
    [
        [{"href": "https://api.paypal.test/v2/payments/captures/CAP-9/../x", "rel": "up"}],
        [{"href": "https://api.paypal.test/v2/payments/authorizations/A-1", "rel": "up"}],
        [{"href": 5, "rel": "up"}],
        "not a list",
        [None],
    ],
)
def test_paypal_refund_up_link_is_read_defensively(links: Any) -> None:
    from providers.paypal.webhooks import event_from_paypal

    event = event_from_paypal(_paypal_refund_event(links=links))
    assert event.capture_id is None


@pytest.mark.parametrize("event_id", [None, "", 42])
def test_paypal_event_without_an_id_is_refused(event_id: Any) -> None:
    """An id-less event would share its deduplication key ("") with every other one."""
    from providers.base import WebhookVerificationError
    from providers.paypal.webhooks import event_from_paypal

    event = _paypal_refund_event()
    event["id"] = event_id
    with pytest.raises(WebhookVerificationError):
        event_from_paypal(event)


# refund answers and declines that say something else ---------------------------------------


def _refund_input(payment_id: str, *, capture_id: str | None = None) -> Any:
    from providers.base import RefundInput

    return RefundInput(
        payment=payment(payment_id, capture_id=capture_id),
        refund_id="ref_1",
        session_id="ses_attack",
        amount=Decimal("10.00"),
        currency="AUD",
        reason=None,
        idempotency_key="rk1",
    )


def _stripe_refund(**changes: Any) -> dict[str, Any]:
    refund: dict[str, Any] = {
        "id": "re_1",
        "object": "refund",
        "status": "succeeded",
        "amount": 1000,
        "currency": "aud",
        "payment_intent": "pi_asked",
    }
    refund.update(changes)
    return refund


def _paypal_refund(**changes: Any) -> dict[str, Any]:
    refund: dict[str, Any] = {
        "id": "RF-1",
        "status": "COMPLETED",
        "amount": {"currency_code": "AUD", "value": "10.00"},
    }
    refund.update(changes)
    return refund


@pytest.mark.parametrize(
    ("provider", "answer"),
    [
        ("stripe", _stripe_refund(amount=100000)),
        ("stripe", _stripe_refund(currency="usd")),
        ("stripe", _stripe_refund(payment_intent="pi_someone_else")),
        ("stripe", _stripe_refund(amount=-1000)),
        ("stripe", _stripe_refund(amount="1000")),
        ("paypal", _paypal_refund(amount={"currency_code": "AUD", "value": "1000.00"})),
        ("paypal", _paypal_refund(amount={"currency_code": "EUR", "value": "10.00"})),
        ("paypal", _paypal_refund(amount={"currency_code": "AUD", "value": "-10.00"})),
    ],
)
async def test_refund_answer_for_something_else_is_pending(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str, answer: Any
) -> None:
    from gateway.domain.session import RefundStatus

    liar.answer = (201 if provider == "paypal" else 200, answer)
    adapter: StripeAdapter | PayPalAdapter
    if provider == "stripe":
        adapter = StripeAdapter(config("stripe", liar), http)
        data = _refund_input("pi_asked")
    else:
        adapter = PayPalAdapter(config("paypal", liar), http)
        data = _refund_input("AUTH-1", capture_id="CAP-1")
    outcome = await adapter.refund_payment(data, timeout=5)
    assert outcome.status is RefundStatus.PENDING, outcome


@pytest.mark.parametrize("provider", ["stripe", "paypal"])
async def test_an_honest_refund_answer_succeeds(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str
) -> None:
    from gateway.domain.session import RefundStatus

    adapter: StripeAdapter | PayPalAdapter
    if provider == "stripe":
        liar.answer = (200, _stripe_refund())
        adapter = StripeAdapter(config("stripe", liar), http)
        data = _refund_input("pi_asked")
    else:
        liar.answer = (201, _paypal_refund())
        adapter = PayPalAdapter(config("paypal", liar), http)
        data = _refund_input("AUTH-1", capture_id="CAP-1")
    outcome = await adapter.refund_payment(data, timeout=5)
    assert outcome.status is RefundStatus.SUCCEEDED


@pytest.mark.parametrize("intent_status", ["succeeded", "requires_capture", "processing"])
async def test_a_stripe_decline_whose_intent_took_the_money_is_not_failed(
    http: aiohttp.ClientSession, liar: LyingProvider, intent_status: str
) -> None:
    """A 402 card_error whose PaymentIntent says it succeeded contradicts itself."""
    intent = _intent(id="pi_new", status=intent_status)
    error = {"type": "card_error", "code": "card_declined", "payment_intent": intent}
    liar.answer = (402, {"error": error})
    outcome = await stripe_charge(http, liar)
    assert outcome.status is SessionStatus.PROCESSING
    assert outcome.failure_reason is None


@pytest.mark.parametrize("units", [5, True, 1.5, {"payments": {}}])
async def test_paypal_charge_answer_with_malformed_purchase_units_is_processing(
    http: aiohttp.ClientSession, liar: LyingProvider, units: Any
) -> None:
    from tests.providers.test_stripe_payments import charge as stripe_charge_input

    liar.answer = (201, {"id": "O-1", "status": "COMPLETED", "purchase_units": units})
    adapter = PayPalAdapter(config("paypal", liar), http)
    data = stripe_charge_input(None, "VAULT-1", paymentMethod="paypal")
    outcome = await adapter.charge_saved(data, timeout=5)
    assert outcome.status is SessionStatus.PROCESSING


@pytest.mark.parametrize("units", [5, True])
def test_paypal_order_webhook_with_malformed_purchase_units_moves_nothing_paid(units: Any) -> None:
    from providers.paypal.webhooks import event_from_paypal

    resource = {"id": "O-1", "status": "COMPLETED", "purchase_units": units}
    event = {"id": "WH-1", "event_type": "CHECKOUT.ORDER.COMPLETED", "resource": resource}
    assert event_from_paypal(event).status is SessionStatus.PROCESSING


# amounts the adapters are asked to send -----------------------------------------------------

_BAD_AMOUNTS = [
    ("JPY", Decimal("10.5")),  # JPY has no minor unit
    ("KWD", Decimal("1.0005")),  # KWD has three
    ("AUD", Decimal("-10.00")),
    ("AUD", Decimal("0")),
    ("AUD", Decimal("NaN")),
    ("AUD", Decimal("Infinity")),
    ("AUD", Decimal("1E+30")),
]


def _in(currency: str, payment_id: str, capture_id: str | None = None) -> PaymentReference:
    return PaymentReference(
        session_reference=payment_id,
        payment_id=payment_id,
        capture_id=capture_id,
        currency=currency,
        amount=Decimal("100"),
        session_id="ses_attack",
    )


def _adapter(provider: str, http: aiohttp.ClientSession, liar: LyingProvider) -> Any:
    kinds = {"stripe": StripeAdapter, "adyen": AdyenAdapter, "paypal": PayPalAdapter}
    return kinds[provider](config(provider, liar), http)


_IDS = {"stripe": "pi_1", "adyen": "PSP1", "paypal": "AUTH-1"}


@pytest.mark.parametrize(("currency", "amount"), _BAD_AMOUNTS, ids=str)
@pytest.mark.parametrize("provider", ["stripe", "adyen", "paypal"])
async def test_a_capture_amount_that_cannot_be_sent_is_refused_before_sending(
    http: aiohttp.ClientSession,
    liar: LyingProvider,
    provider: str,
    currency: str,
    amount: Decimal,
) -> None:
    adapter = _adapter(provider, http, liar)
    with pytest.raises(FlowNotSupported):
        await adapter.capture_payment(
            _in(currency, _IDS[provider]), amount, idempotency_key="k", timeout=5
        )
    assert [p for p in liar.paths if "oauth2" not in p] == []


@pytest.mark.parametrize(("currency", "amount"), _BAD_AMOUNTS, ids=str)
@pytest.mark.parametrize("provider", ["stripe", "adyen", "paypal"])
async def test_a_refund_amount_that_cannot_be_sent_is_refused_before_sending(
    http: aiohttp.ClientSession,
    liar: LyingProvider,
    provider: str,
    currency: str,
    amount: Decimal,
) -> None:
    from providers.base import RefundInput

    adapter = _adapter(provider, http, liar)
    data = RefundInput(
        payment=_in(currency, _IDS[provider], capture_id="CAP-1"),
        refund_id="ref_1",
        session_id="ses_attack",
        amount=amount,
        currency=currency,
        reason=None,
        idempotency_key="rk",
    )
    with pytest.raises(FlowNotSupported):
        await adapter.refund_payment(data, timeout=5)
    assert [p for p in liar.paths if "oauth2" not in p] == []


@pytest.mark.parametrize("provider", ["stripe", "adyen", "paypal"])
async def test_a_refund_in_another_currency_than_its_payment_is_refused(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str
) -> None:
    from providers.base import RefundInput

    data = RefundInput(
        payment=_in("AUD", _IDS[provider], capture_id="CAP-1"),
        refund_id="ref_1",
        session_id="ses_attack",
        amount=Decimal("10.00"),
        currency="EUR",
        reason=None,
        idempotency_key="rk",
    )
    with pytest.raises(FlowNotSupported):
        await _adapter(provider, http, liar).refund_payment(data, timeout=5)
    assert [p for p in liar.paths if "oauth2" not in p] == []


# success that names no payment to capture or refund later ---------------------------------


async def test_adyen_authorised_charge_without_a_psp_reference_is_processing(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    liar.answer = (200, {"resultCode": "Authorised"})
    outcome = await _adapter("adyen", http, liar).charge_saved(
        charge("shopper-1", "TOKEN1"), timeout=5
    )
    assert outcome.status is SessionStatus.PROCESSING


async def test_paypal_completed_capture_without_an_id_is_processing(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    """A capture nobody can name can never be refunded: the webhook must bring its id."""
    liar.answer = (201, _paypal_capture(id=None))
    outcome = await paypal_capture(http, liar)
    assert outcome.status is SessionStatus.PROCESSING


async def test_paypal_vaulted_charge_captured_without_an_id_is_processing(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    capture = _paypal_capture(id=None)
    units = [{"payments": {"captures": [capture]}}]
    order = {"id": "O-1", "status": "COMPLETED", "purchase_units": units}
    liar.answer = (201, order)
    adapter = _adapter("paypal", http, liar)
    outcome = await adapter.charge_saved(charge(None, "VAULT-1", paymentMethod="paypal"), timeout=5)
    assert outcome.status is SessionStatus.PROCESSING


@pytest.mark.parametrize(("provider", "limit"), [("stripe", 255), ("adyen", 64), ("paypal", 108)])
async def test_idempotency_keys_fit_the_provider_on_every_call(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str, limit: int
) -> None:
    """The gateway derives keys from the merchant's Idempotency-Key: any length, any script."""
    from providers.base import RefundInput

    key = "merchant:" + "ключ/ü" * 100
    liar.answer = (200, {})
    adapter = _adapter(provider, http, liar)
    ref = _in("AUD", _IDS[provider], capture_id="CAP-1")
    for call in (
        adapter.capture_payment(ref, Decimal("1.00"), idempotency_key=key, timeout=5),
        adapter.refund_payment(
            RefundInput(ref, "ref_1", "ses_1", Decimal("1.00"), "AUD", None, key), timeout=5
        ),
    ):
        with contextlib.suppress(ProviderError):  # the liar's empty answer: only what was sent
            await call
    assert len(liar.keys) == 2
    assert all(k.isascii() and 0 < len(k) <= limit for k in liar.keys), liar.keys


async def test_paypal_completion_answer_for_another_order_is_not_completed(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    """Capturing order O-ASKED, PayPal answers O-OTHER captured: that says nothing of O-ASKED."""
    from providers.base import CAPTURE

    units = [{"custom_id": "ses_other", "payments": {"captures": [_paypal_capture()]}}]
    liar.answer = (201, {"id": "O-OTHER", "status": "COMPLETED", "purchase_units": units})
    adapter = _adapter("paypal", http, liar)
    event = await adapter.complete_approved(
        "O-ASKED", intent=CAPTURE, idempotency_key="k", timeout=5
    )
    assert event is None or event.status is not SessionStatus.COMPLETED, event
    if event is not None:
        assert event.reference == "O-ASKED"


@pytest.mark.parametrize(
    ("provider", "answer"),
    [
        ("stripe", _intent(status=None)),
        ("stripe", _intent(status="succeeded_maybe")),
        ("stripe", _intent(status=["succeeded"])),
        ("paypal", _paypal_capture(status=None)),
        ("paypal", _paypal_capture(status="completed")),
        ("paypal", _paypal_capture(status={"value": "COMPLETED"})),
        ("adyen", {"status": "received"}),
        ("adyen", {"pspReference": "C1", "status": "authorised"}),
        ("adyen", {}),
    ],
)
async def test_a_capture_answer_without_a_known_status_is_never_completed(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str, answer: Any
) -> None:
    liar.answer = (201 if provider != "stripe" else 200, answer)
    adapter = _adapter(provider, http, liar)
    try:
        outcome = await adapter.capture_payment(
            _in("AUD", _IDS[provider]), Decimal("100"), idempotency_key="k", timeout=5
        )
    except ProviderError:
        return
    assert outcome.status is SessionStatus.PROCESSING, outcome


# secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["stripe", "adyen", "paypal"])
async def test_a_provider_echoing_our_secret_never_puts_it_in_an_error(
    http: aiohttp.ClientSession, liar: LyingProvider, provider: str
) -> None:
    """Errors keep the provider's message (it reaches attempts and logs): a provider, or
    whatever answers at its URL, that echoes the credentials must not carry them along."""
    secrets = SANDBOX_SECRETS[provider]
    secret = secrets.get("api_key") or secrets["client_secret"]
    assert secret
    message = f"invalid credentials {secret} for request"
    body = {
        "error": {"type": "invalid_request_error", "message": message, "param": secret},
        "errorCode": secret,
        "message": message,
        "name": secret,
        "details": [{"issue": secret}],
    }
    liar.answer = (400, body)
    adapter = _adapter(provider, http, liar)
    with pytest.raises(ProviderError) as caught:
        await adapter.capture_payment(
            _in("AUD", _IDS[provider]), Decimal("1.00"), idempotency_key="k", timeout=5
        )
    error = caught.value
    shown = [str(error), error.reason, getattr(error, "code", None), getattr(error, "issue", None)]
    assert not any(secret in (text or "") for text in shown), shown


@pytest.mark.parametrize("state", ["CAPTURED", "PARTIALLY_CAPTURED", "CREATED", "PENDING"])
async def test_paypal_void_answer_that_says_not_voided_is_not_cancelled(
    http: aiohttp.ClientSession, liar: LyingProvider, state: str
) -> None:
    """A void answered with an authorization that was captured (or still stands) did not void
    it: reading CANCELLED would release a payment whose money was taken."""
    liar.answer = (200, {"id": "AUTH-1", "status": state})
    outcome = await _adapter("paypal", http, liar).void_payment(
        _in("AUD", "AUTH-1"), idempotency_key="k", timeout=5
    )
    assert outcome.status is not SessionStatus.CANCELLED, outcome
    assert outcome.status is not SessionStatus.COMPLETED, outcome


@pytest.mark.parametrize("answer", [b"", {"id": "AUTH-1", "status": "VOIDED"}, {"id": "AUTH-1"}])
async def test_paypal_void_answer_that_says_voided_is_cancelled(
    http: aiohttp.ClientSession, liar: LyingProvider, answer: Any
) -> None:
    liar.answer = (200 if answer else 204, answer)
    outcome = await _adapter("paypal", http, liar).void_payment(
        _in("AUD", "AUTH-1"), idempotency_key="k", timeout=5
    )
    assert outcome.status is SessionStatus.CANCELLED


async def test_paypal_void_answer_for_another_authorization_is_not_cancelled(
    http: aiohttp.ClientSession, liar: LyingProvider
) -> None:
    liar.answer = (200, {"id": "AUTH-OTHER", "status": "VOIDED"})
    outcome = await _adapter("paypal", http, liar).void_payment(
        _in("AUD", "AUTH-1"), idempotency_key="k", timeout=5
    )
    assert outcome.status is SessionStatus.PROCESSING


@pytest.mark.parametrize("value", ["-10.00", "1e1", 10, "ten"])
def test_paypal_refund_event_with_an_unreadable_amount_moves_nothing(value: Any) -> None:
    from gateway.domain.session import RefundStatus
    from providers.paypal.webhooks import event_from_paypal

    event = event_from_paypal(_paypal_refund_event(amount={"currency_code": "AUD", "value": value}))
    assert event.refund is not None
    assert (event.refund.status, event.refund.amount) == (RefundStatus.PENDING, None)
