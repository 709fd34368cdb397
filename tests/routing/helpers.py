"""Builders shared by the routing tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from gateway.domain.models import CheckoutRequest, parse_checkout_request
from gateway.routing.compiled import CompiledRules, compile_rules
from gateway.routing.decision import RoutingDecision
from gateway.routing.engine import decide
from gateway.routing.features import Features, extract_features
from gateway.routing.rules import load_rules_text
from gateway.routing.stats import StatsSnapshot
from providers.base import Capabilities

ROOT = Path(__file__).resolve().parents[2]
SEED_BYTES = (ROOT / "tests/fixtures/seed_request.json").read_bytes()
ALL_METHODS = frozenset(
    {"card", "paypal", "apple_pay", "google_pay", "ideal", "klarna", "sepa_debit"}
)
OPEN = Capabilities(payment_methods=ALL_METHODS)


def rules_yaml(
    providers: Mapping[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
    scoring: Mapping[str, Any] | None = None,
    version: str = "test-1",
) -> str:
    """A rules file as YAML text; three open providers by default."""
    doc: dict[str, Any] = {
        "schema_version": 1,
        "version": version,
        "providers": dict(providers or {"stripe": {}, "adyen": {}, "paypal": {}}),
        "rules": rules or [],
    }
    if scoring is not None:
        doc["scoring"] = dict(scoring)
    return yaml.safe_dump(doc, sort_keys=False)


def compiled(
    providers: Mapping[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
    scoring: Mapping[str, Any] | None = None,
    capabilities: Mapping[str, Capabilities] | None = None,
    version: str = "test-1",
) -> CompiledRules:
    text = rules_yaml(providers, rules, scoring, version)
    return compile_rules(load_rules_text(text), capabilities)


def request(**changes: Any) -> CheckoutRequest:
    """The seed request with top-level fields replaced (``country`` sets the billing country,
    ``total`` sets a one-line basket of that amount)."""
    body: dict[str, Any] = json.loads(SEED_BYTES, parse_float=Decimal)
    country = changes.pop("country", None)
    total = changes.pop("total", None)
    if country is not None:
        body["customer"]["billingAddress"]["country"] = country
        body["customer"]["shippingAddress"]["country"] = country
    if total is not None:
        body["amount"] = {"total": Decimal(total), "shipping": 0, "tax": 0}
        body["orderItems"] = [{"name": "x", "quantity": 1, "unitPrice": Decimal(total)}]
    body.update(changes)
    return CheckoutRequest.model_validate(body)


def seed_request() -> CheckoutRequest:
    return parse_checkout_request(SEED_BYTES)


def features(merchant: str = "m1", **changes: Any) -> Features:
    return extract_features(request(**changes), merchant)


def route(
    rules: CompiledRules,
    f: Features | None = None,
    stats: StatsSnapshot | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> RoutingDecision:
    return decide(f or features(), rules, stats or StatsSnapshot(), unavailable or {})


def first(decision: RoutingDecision) -> str | None:
    return decision.ranked[0].provider if decision.ranked else None


def reasons(decision: RoutingDecision) -> dict[str, str]:
    return {e.provider: e.reason for e in decision.excluded}
