"""Helpers shared by the Stripe adapter and sandbox tests: requests, inputs, signed events."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway.domain.models import CheckoutRequest, parse_checkout_request, semantic_problems
from providers.base import CreateSessionInput
from providers.stripe.webhooks import sign_payload

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed_request.json"


def seed_request() -> CheckoutRequest:
    """The seed request, parsed exactly as the API parses it."""
    return parse_checkout_request(SEED.read_bytes())


def checkout_request(**changes: Any) -> CheckoutRequest:
    """The seed request with top-level fields replaced (amounts as strings, parsed exactly)."""
    data = json.loads(SEED.read_text(), parse_float=str, parse_int=str)
    data["orderItems"] = [
        {**item, "quantity": int(item["quantity"])} for item in data["orderItems"]
    ]
    data.update(changes)
    request = CheckoutRequest.model_validate(data)
    problems = semantic_problems(request)
    assert problems == [], problems
    return request


def session_input(
    request: CheckoutRequest | None = None,
    *,
    key: str | None = None,
    expires_in: int = 3600,
    session_id: str | None = None,
) -> CreateSessionInput:
    """A create call as the gateway makes it."""
    return CreateSessionInput(
        session_id=session_id or f"ses_{uuid.uuid4().hex}",
        merchant_id="merchant_42",
        idempotency_key=key or f"gw:{uuid.uuid4()}",
        request=request or seed_request(),
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )


def signed_event(
    secret: str,
    event_type: str = "checkout.session.completed",
    *,
    obj: dict[str, Any] | None = None,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a Stripe webhook call signed with ``secret``."""
    session = {
        "id": "cs_test_abc",
        "object": "checkout.session",
        "payment_status": "paid",
        "status": "complete",
        "metadata": {"gateway_session_id": "ses_1", "order_reference": "ORD-1"},
        "customer": None,
        "payment_intent": "pi_123",
    }
    session.update(obj or {})
    body = orjson.dumps(
        {
            "id": "evt_test_1",
            "object": "event",
            "type": event_type,
            "created": 1_700_000_000,
            "livemode": False,
            "data": {"object": session},
        }
    )
    t = int(time.time()) if timestamp is None else timestamp
    return {"Stripe-Signature": f"t={t},v1={sign_payload(secret, t, body)}"}, body
