"""Routing of the session types after the checkout: a setup session goes only to providers
that can save a method and is not refused by amount bounds for its zero total; a next payment
in a series goes to the provider holding its mandate and nowhere else, and says so."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from gateway.routing.service import Router
from providers.base import Capabilities
from tests.api.conftest import ROOT
from tests.providers.hosted_inputs import request_from, seed_data

CARD = frozenset({"card"})
CAPS = {
    "stripe": Capabilities(
        payment_methods=CARD,
        session_types=frozenset({"one_time", "first_in_series", "setup", "next_in_series"}),
    ),
    "adyen": Capabilities(
        payment_methods=CARD,
        session_types=frozenset({"one_time", "first_in_series", "next_in_series"}),
    ),
    "paypal": Capabilities(payment_methods=frozenset({"paypal"})),
}
MANDATE = "0b6f8c1e-2f4a-4c1d-9e3b-5a7d6c8e9f01"


def _router() -> Router:
    return Router(ROOT / "routing_rules.yaml", CAPS)


def _setup() -> dict[str, Any]:
    data = seed_data()
    data.update(sessionType="setup", amount={"total": Decimal(0)})
    del data["orderItems"]
    return data


def _series(**changes: Any) -> dict[str, Any]:
    data = seed_data()
    data.update(sessionType="next_in_series", mandateSessionId=MANDATE, **changes)
    del data["redirectUrls"]
    return data


def test_a_setup_session_is_not_refused_by_a_minimum_amount() -> None:
    decision = _router().decide(request_from(_setup()), "merchant-1")
    # the rules give stripe a minimum of 0.50; a setup session charges nothing
    assert [c.provider for c in decision.ranked] == ["stripe"]
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["adyen"] == "adapter does not support session type setup"


def test_a_zero_total_of_a_paying_session_is_still_bound() -> None:
    data = seed_data()
    data.update(amount={"total": Decimal(0)})
    data["orderItems"][0]["unitPrice"] = Decimal(0)
    decision = _router().decide(request_from(data), "merchant-1")
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["stripe"] == ("amount 0 AUD is below the minimum 0.50 of the routing rules")


def test_a_next_payment_goes_only_to_the_mandates_provider() -> None:
    decision = _router().decide(request_from(_series()), "merchant-1", held_by="adyen")
    assert [c.provider for c in decision.ranked] == ["adyen"]
    assert decision.ranked[0].details["reason"] == "holds the mandate (adyen)"
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons == {"stripe": "mandate is held by adyen", "paypal": "mandate is held by adyen"}
    assert decision.notes[0] == "next_in_series: routed only to adyen, which holds the mandate"
    explained = decision.explain()
    assert explained["selectedProvider"] == "adyen"
    assert explained["candidates"][0]["details"]["reason"] == "holds the mandate (adyen)"


def test_a_better_scored_provider_never_takes_anothers_mandate() -> None:
    free = _router().decide(request_from(_series()), "merchant-1")
    best, second = (c.provider for c in free.ranked)
    held = _router().decide(request_from(_series()), "merchant-1", held_by=second)
    assert [c.provider for c in held.ranked] == [second]
    assert {e.provider: e.reason for e in held.excluded}[best] == f"mandate is held by {second}"


def test_the_mandates_provider_keeps_its_own_refusal() -> None:
    # the holder is down (an open circuit): no one else is offered, its reason is kept
    decision = _router().decide(
        request_from(_series()),
        "merchant-1",
        held_by="stripe",
        unavailable={"stripe": "circuit open"},
    )
    assert decision.ranked == ()
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons == {
        "stripe": "circuit open",
        "adyen": "mandate is held by stripe",
        "paypal": "mandate is held by stripe",
    }


def test_a_holder_that_cannot_charge_saved_methods_is_excluded_for_it() -> None:
    caps = dict(CAPS, adyen=Capabilities(payment_methods=CARD))
    decision = Router(ROOT / "routing_rules.yaml", caps).decide(
        request_from(_series()), "merchant-1", held_by="adyen"
    )
    assert decision.ranked == ()
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["adyen"] == "adapter does not support session type next_in_series"
    assert reasons["stripe"] == "mandate is held by adyen"


def test_a_holder_without_an_adapter_is_named() -> None:
    decision = _router().decide(request_from(_series()), "merchant-1", held_by="gone")
    assert decision.ranked == ()
    reasons = {e.provider: e.reason for e in decision.excluded}
    assert reasons["gone"] == "not configured in the routing rules"
    assert reasons["stripe"] == "mandate is held by gone"
