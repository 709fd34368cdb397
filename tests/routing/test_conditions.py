"""Each condition test and the all / any / not combinators, through the compiled rules."""

from __future__ import annotations

from typing import Any

import pytest

from tests.routing.helpers import compiled, features, route


def fires(when: dict[str, Any], **request: Any) -> bool:
    rules = compiled(rules=[{"id": "r", "when": when, "then": {"boost": {"adyen": 1}}}])
    merchant = request.pop("merchant", "m1")
    return "r" in route(rules, features(merchant, **request)).matched_rules


@pytest.mark.parametrize(
    ("when", "request_", "expected"),
    [
        ({"currency": "AUD"}, {}, True),
        ({"currency": ["EUR", "USD"]}, {}, False),
        ({"country": "AU"}, {}, True),
        ({"country": ["NL"]}, {}, False),
        ({"country": ["NL"]}, {"customer": None}, False),
        ({"payment_method": "card"}, {}, True),
        ({"payment_method": ["ideal", "paypal"]}, {}, False),
        ({"capture_method": "automatic"}, {}, True),
        ({"capture_method": "manual"}, {}, False),
        ({"capture_method": "manual"}, {"captureMethod": "manual"}, True),
        ({"merchant": ["m1", "m2"]}, {}, True),
        ({"merchant": "m2"}, {}, False),
        ({"locale": "en"}, {}, True),
        ({"locale": "en_AU"}, {}, True),
        ({"locale": "en-AU"}, {}, True),
        ({"locale": "en_GB"}, {}, False),
        ({"locale": "fr"}, {}, False),
        ({"locale": "en"}, {"locale": None}, False),
        ({"amount": {"gte": "140.76"}}, {}, True),
        ({"amount": {"gt": "140.76"}}, {}, False),
        ({"amount": {"lte": "140.76"}}, {}, True),
        ({"amount": {"lt": "140.76"}}, {}, False),
        ({"amount": {"gt": "140.75", "lt": "140.77"}}, {}, True),
        ({"amount": {"gte": 1000}}, {}, False),
        ({"items": {"gte": 1, "lte": 1}}, {}, True),
        ({"items": {"gt": 1}}, {}, False),
        (
            {"quantity": {"gte": 3}},
            {
                "orderItems": [{"name": "a", "quantity": 3, "unitPrice": "119"}],
                "amount": {"total": "378.76", "shipping": "9.95", "tax": "11.81"},
            },
            True,
        ),
        ({"additional_information": {"key": "campaignId"}}, {}, True),
        (
            {"additional_information": {"key": "campaignId", "values": ["summer-sale-2024"]}},
            {},
            True,
        ),
        ({"additional_information": {"key": "campaignId", "values": "winter"}}, {}, False),
        ({"additional_information": {"key": "channel"}}, {}, False),
        ({"additional_information": {"key": "channel"}}, {"additionalInformation": None}, False),
        (
            {
                "additional_information": [
                    {"key": "campaignId"},
                    {"key": "referralCode", "values": ["REF-ABC"]},
                ]
            },
            {},
            True,
        ),
        ({"all": [{"currency": "AUD"}, {"country": "AU"}]}, {}, True),
        ({"all": [{"currency": "AUD"}, {"country": "NZ"}]}, {}, False),
        ({"any": [{"currency": "EUR"}, {"country": "AU"}]}, {}, True),
        ({"any": [{"currency": "EUR"}, {"country": "NZ"}]}, {}, False),
        ({"not": {"currency": "EUR"}}, {}, True),
        ({"not": {"currency": "AUD"}}, {}, False),
        (
            {"currency": "AUD", "not": {"any": [{"country": "NZ"}, {"amount": {"gte": 1000}}]}},
            {},
            True,
        ),
        ({"currency": "AUD", "country": "AU", "payment_method": "card", "locale": "en"}, {}, True),
        ({"currency": "AUD", "country": "AU", "payment_method": "card", "locale": "fr"}, {}, False),
    ],
)
def test_condition(when: dict[str, Any], request_: dict[str, Any], expected: bool) -> None:
    assert fires(when, **request_) is expected


def test_amounts_compare_exactly() -> None:
    assert fires({"amount": {"gte": "0.30"}}, total="0.30")
    assert not fires({"amount": {"gt": "0.30"}}, total="0.30")
    assert fires({"amount": {"gt": "0.29"}}, total="0.30")


def test_a_rule_without_when_matches_everything() -> None:
    rules = compiled(rules=[{"id": "always", "then": {"boost": {"stripe": 1}}}])
    assert route(rules).matched_rules == ("always",)
    assert route(rules, features(currency="EUR", country="NL")).matched_rules == ("always",)


def test_disabled_rules_never_fire() -> None:
    rules = compiled(rules=[{"id": "off", "enabled": False, "then": {"boost": {"stripe": 1}}}])
    assert route(rules).matched_rules == ()


def test_matched_rules_are_listed_in_priority_order_then_file_order() -> None:
    rules = compiled(
        rules=[
            {"id": "low", "priority": 1, "then": {"boost": {"stripe": 1}}},
            {"id": "high", "priority": 9, "then": {"boost": {"stripe": 1}}},
            {"id": "low-too", "priority": 1, "then": {"boost": {"stripe": 1}}},
        ]
    )
    assert route(rules).matched_rules == ("high", "low", "low-too")


def test_plan_cache_keeps_answers_right_across_requests() -> None:
    rules = compiled(
        rules=[
            {
                "id": "eur",
                "when": {"currency": "EUR", "amount": {"gte": 100}},
                "then": {"boost": {"adyen": 5}},
            }
        ]
    )
    assert route(rules, features(currency="EUR", total="150")).matched_rules == ("eur",)
    assert route(rules, features(currency="EUR", total="50")).matched_rules == ()
    assert route(rules, features(currency="AUD", total="150")).matched_rules == ()
    assert route(rules, features(currency="EUR", total="150")).matched_rules == ("eur",)
