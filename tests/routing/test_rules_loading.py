"""Loading the rules file: frozen models, exact decimals, every error with its line."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from gateway.routing.rules import RulesError, load_rules_file, load_rules_text
from tests.routing.helpers import ROOT, rules_yaml


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RulesError) as caught:
        load_rules_text(text, source="r.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def test_repository_file_loads_into_frozen_models() -> None:
    loaded = load_rules_file(ROOT / "routing_rules.yaml")
    rules = loaded.rules
    assert rules.schema_version == 1
    assert set(rules.providers) == {"stripe", "adyen", "paypal"}
    assert rules.providers["stripe"].fees is not None
    assert rules.providers["stripe"].fees.percent == Decimal("2.9")
    assert rules.providers["stripe"].fees.fixed["USD"] == Decimal("0.30")
    assert len(loaded.content_hash) == 64
    with pytest.raises(ValidationError):
        rules.providers["stripe"].preference = 1  # type: ignore[misc]


def test_yaml_floats_are_read_as_exact_decimals() -> None:
    text = rules_yaml({"stripe": {"fees": {"percent": 0.1, "fixed": {"USD": 0.3}}}})
    fees = load_rules_text(text).rules.providers["stripe"].fees
    assert fees is not None
    assert fees.percent == Decimal("0.1")
    assert fees.fixed["USD"] == Decimal("0.3")


def test_unknown_key_is_reported_with_its_line() -> None:
    text = """schema_version: 1
version: v1
providers:
  stripe:
    preferance: 10
"""
    assert problems(text) == [(5, "providers.stripe.preferance", "unknown key 'preferance'")]


def test_every_error_is_reported_each_with_its_line() -> None:
    text = """schema_version: 1
version: v1
providers:
  stripe: {}
  adyen:
    currencies: [EUR, XXY]
rules:
  - id: a
    when:
      country: ZZ
    then:
      split: {stripe: 60, adyen: 30}
  - id: b
    then:
      boost: {stripe: 500}
"""
    found = problems(text)
    lines = {line for line, _, _ in found}
    assert {6, 10, 12, 15} <= lines
    messages = " | ".join(m for _, _, m in found)
    assert "'XXY' is not an active ISO 4217 currency code" in messages
    assert "'ZZ' is not an ISO 3166-1 alpha-2 country code" in messages
    assert "split percentages must add up to 100 (they add up to 90)" in messages
    assert any(path == "rules[1].then.boost.stripe" for _, path, _ in found)


def test_providers_referenced_but_not_configured() -> None:
    text = """schema_version: 1
version: v1
providers:
  stripe: {}
scoring:
  fallback_order: [stripe, adyen]
rules:
  - id: a
    then:
      pin: paypal
  - id: a
    then:
      exclude: stripe
"""
    found = problems(text)
    assert (
        6,
        "scoring.fallback_order[1]",
        "provider 'adyen' is referenced but not configured under providers",
    ) in found
    assert (
        10,
        "rules[0].then.pin",
        "provider 'paypal' is referenced but not configured under providers",
    ) in found
    assert (11, "rules[1].id", "duplicate rule id 'a' (first at rules[0])") in found


def test_duplicate_yaml_keys_are_refused() -> None:
    text = "schema_version: 1\nversion: v1\nproviders:\n  stripe: {}\n  stripe: {enabled: false}\n"
    [(line, _, message)] = problems(text)
    assert line == 5
    assert "duplicate key 'stripe'" in message


def test_syntax_errors_carry_the_line() -> None:
    [(line, _, message)] = problems("schema_version: 1\nversion: v1\nproviders: {stripe: [}\n")
    assert line == 3
    assert message.startswith("invalid YAML")


HEAD = "schema_version: 1\nversion: v1\n"
ONE = HEAD + "providers: {stripe: {}}\n"
TWO = HEAD + "providers: {stripe: {}, adyen: {}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: v1\nproviders: {stripe: {}}\n", "missing required key 'schema_version'"),
        (
            "schema_version: 2\nversion: v1\nproviders: {stripe: {}}\n",
            "unsupported schema_version 2",
        ),
        (HEAD + "providers: {}\n", "at least 1 item"),
        ("- just a list\n", "the rules file must be a YAML mapping"),
        (ONE + "rules: [{id: x, when: {}, then: {pin: stripe}}]\n", "an empty condition"),
        (TWO + "rules: [{id: x, then: {pin: stripe, split: {stripe: 50, adyen: 50}}}]", "pin and"),
        (ONE + "rules: [{id: x, then: {}}]\n", "at least one of boost"),
        (HEAD + "providers: {stripe: {amount: {min: 10, max: 5}}}\n", "min must not exceed max"),
        (HEAD + "providers: {stripe: {fees: {percent: .nan}}}\n", "not a finite number"),
        (
            ONE + "scoring: {weights: {preference: 0, success_rate: 0, latency: 0, cost: 0}}",
            "weight",
        ),
        (
            HEAD + "providers: {stripe: {payment_methods: [cash]}}\n",
            "'cash' is not a payment method",
        ),
        (
            ONE + "rules: [{id: x, when: {amount: {gt: 1, gte: 2}}, then: {pin: stripe}}]",
            "gt or gte",
        ),
        (ONE + "rules: [{id: x, when: {locale: english}, then: {pin: stripe}}]\n", "not a locale"),
        (ONE + "rules: [{id: 'bad id', then: {pin: stripe}}]\n", "should match pattern"),
        (ONE + "scoring: {latency: {good_ms: 500, bad_ms: 100}}\n", "bad_ms must be greater"),
        (TWO + "rules: [{id: x, then: {split: {stripe: 100}}}]\n", "at least two providers"),
    ],
)
def test_schema_errors(text: str, expected: str) -> None:
    assert any(expected in message for _, _, message in problems(text)), problems(text)


def test_unreadable_file_is_a_rules_error(tmp_path: object) -> None:
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules_file("/nonexistent/routing_rules.yaml")


def test_error_text_names_file_and_line() -> None:
    with pytest.raises(RulesError) as caught:
        load_rules_text(
            "schema_version: 1\nversion: v1\nproviders:\n  stripe: {bogus: 1}\n", source="x.yaml"
        )
    assert str(caught.value) == "x.yaml:4: error: providers.stripe.bogus: unknown key 'bogus'"


def test_single_values_are_accepted_where_lists_are_meant() -> None:
    text = rules_yaml(
        {"stripe": {"currencies": "EUR"}, "adyen": {}},
        [{"id": "x", "when": {"currency": "EUR", "country": "NL"}, "then": {"exclude": "stripe"}}],
    )
    rules = load_rules_text(text).rules
    assert rules.providers["stripe"].currencies == ("EUR",)
    when = rules.rules[0].when
    assert when is not None
    assert when.country == ("NL",)
    assert rules.rules[0].then.exclude == ("stripe",)


def test_yaml_1_1_pitfalls_are_read_as_written() -> None:
    text = """schema_version: 1
version: 2024.10
providers:
  stripe: {countries: [NO, SE, DK]}
rules:
  - id: 42
    when: {merchant: 12345, country: NO}
    then: {boost: {stripe: 1}}
"""
    rules = load_rules_text(text).rules
    assert rules.version == "2024.10"
    assert rules.providers["stripe"].countries == ("NO", "SE", "DK")
    assert rules.rules[0].id == "42"
    when = rules.rules[0].when
    assert when is not None
    assert when.merchant == ("12345",)
    assert when.country == ("NO",)
    assert load_rules_text(
        text.replace("{countries: [NO, SE, DK]}", "{enabled: no}")
    ).rules.providers["stripe"].enabled in (False, "no")


def test_fee_inputs_are_bounded_so_every_fee_is_exact() -> None:
    # a fee percent with 30 places made the exact fee of a large order unrepresentable
    text = rules_yaml(
        {"stripe": {"fees": {"percent": "2.900000000000000000000000000001", "fixed": {}}}}
    )
    found = problems(text)
    assert [(path, message) for _, path, message in found] == [
        (
            "providers.stripe.fees.percent",
            "Decimal input should have no more than 4 decimal places",
        )
    ]
    fine = rules_yaml({"stripe": {"fees": {"percent": 2.9125, "fixed": {"KWD": 0.125}}}})
    fees = load_rules_text(fine).rules.providers["stripe"].fees
    assert fees is not None
    assert fees.percent == Decimal("2.9125")
