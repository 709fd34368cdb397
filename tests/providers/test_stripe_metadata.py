"""``additionalInformation`` on Stripe's bracketed form keys.

Stripe nests on brackets (``metadata[a][b]=x`` is ``{"a": {"b": "x"}}``) and has no escape for
them, so the API refuses keys holding ``[`` or ``]`` with a 400 naming the key. Every other key
and value the API accepts is encoded so that both the strict spec parser and the sandbox read
back exactly the metadata the adapter meant.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.models import RequestProblems, parse_checkout_request
from providers.sandbox.stripe_wire import decode_form
from providers.stripe.transformers import build_create_params, encode_form
from tests.contracts.spec_validator import stripe_form_to_dict, validate_request
from tests.providers.hosted_inputs import SEED_PATH, checkout_input

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
_GATEWAY_KEYS = {"gateway_session_id", "order_reference", "merchant_id"}
_HEADERS = {
    "Authorization": "Bearer sk_test_x",
    "Content-Type": "application/x-www-form-urlencoded",
    "Stripe-Version": "2026-09-30.endive",
    "Idempotency-Key": "k",
}

_keys = st.one_of(
    st.text(min_size=1, max_size=64),
    st.text(alphabet="ab[]=&%+ .", min_size=1, max_size=8),
)
_values = st.one_of(st.text(max_size=600), st.text(alphabet="[]=&%+ \n\x00é", max_size=20))


def _parse(info: dict[str, str]) -> object:
    body = json.loads(SEED_PATH.read_text())
    body["additionalInformation"] = info
    try:
        return parse_checkout_request(json.dumps(body).encode())
    except RequestProblems as exc:
        return exc


def test_a_bracketed_key_is_a_400_not_a_stripe_502() -> None:
    refused = _parse({"a][b": "x"})
    assert isinstance(refused, RequestProblems)
    assert refused.problems == [
        "additionalInformation.a][b.[key]: keys must not contain '[' or ']'"
    ]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=12))
def test_every_accepted_key_reads_back_as_the_same_metadata(info: dict[str, str]) -> None:
    parsed = _parse(info)
    if isinstance(parsed, RequestProblems):
        assert any("[" in k or "]" in k for k in info) or any(
            len(k) > 64 or len(v) > 512 for k, v in info.items()
        )
        assert all(
            "keys must not contain '[' or ']'" in p or "at most" in p for p in parsed.problems
        ), parsed.problems
        return
    params = build_create_params(checkout_input(parsed), _NOW)  # type: ignore[arg-type]
    metadata = params["metadata"]
    for key, value in info.items():
        if len(key) <= 40 and key not in _GATEWAY_KEYS | {"gateway_saved_method"}:
            assert metadata[key] == value[:500]
    form = encode_form(params)
    assert decode_form(form)["metadata"] == metadata
    assert decode_form(form)["payment_intent_data"]["metadata"] == metadata
    assert stripe_form_to_dict(form)["metadata"] == metadata
    assert validate_request("stripe", _HEADERS, form, now=_NOW) == []
