"""``gateway rules check``: the linter's findings, messages with lines, and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.routing.analysis import implies, never_matches
from gateway.routing.check import check_rules_text
from gateway.routing.conditions import Condition
from tests.routing.helpers import ROOT

HEADER = """schema_version: 1
version: v1
providers:
  stripe: {payment_methods: [card, ideal]}
  adyen: {}
  paypal: {payment_methods: [paypal]}
rules:
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "rules", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def findings(rules: str) -> list[tuple[int | None, str, str]]:
    report = check_rules_text(HEADER + rules, source="r.yaml")
    return [(p.line, p.severity, p.message) for p in report.problems]


def test_the_repository_file_is_clean() -> None:
    done = run("check", "routing_rules.yaml")
    assert done.returncode == 0, done.stderr
    assert "0 error(s), 0 warning(s)" in done.stdout


def test_schema_errors_exit_1_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER
        + "  - id: a\n    then:\n      split: {stripe: 50, adyen: 40}\n"
        + "  - id: b\n    then: {pin: mollie}\n"
    )
    done = run("check", str(bad))
    assert done.returncode == 1
    assert (
        f"{bad}:10: error: rules[0].then.split: split percentages must add up to 100" in done.stderr
    )
    assert "1 error(s), 0 warning(s)" in done.stderr
    bad.write_text(HEADER + "  - id: b\n    then: {pin: mollie}\n")
    done = run("check", str(bad))
    assert done.returncode == 1
    assert (
        f"{bad}:9: error: rules[0].then.pin: provider 'mollie' is referenced but not "
        "configured under providers"
    ) in done.stderr


def test_rules_that_can_never_match_are_errors(tmp_path: Path) -> None:
    rules = (
        "  - id: two-currencies\n    when: {all: [{currency: EUR}, {currency: USD}]}\n"
        "    then: {boost: {adyen: 5}}\n"
        "  - id: empty-range\n    when: {amount: {gte: 100, lt: 100}}\n"
        "    then: {boost: {adyen: 5}}\n"
        "  - id: fine\n    when: {any: [{currency: EUR}, {amount: {gte: 100}}]}\n"
        "    then: {boost: {adyen: 5}}\n"
    )
    assert findings(rules) == [
        (9, "error", "rule 'two-currencies' can never match: its conditions contradict each other"),
        (12, "error", "rule 'empty-range' can never match: its conditions contradict each other"),
    ]
    path = tmp_path / "dead.yaml"
    path.write_text(HEADER + rules)
    done = run("check", str(path), "--json")
    assert done.returncode == 1
    payload = json.loads(done.stdout)
    assert payload["ok"] is False
    assert [p["line"] for p in payload["problems"]] == [9, 12]


def test_shadowed_by_a_higher_priority_pin_is_a_warning_and_strict_fails(tmp_path: Path) -> None:
    rules = (
        "  - id: eur-adyen\n    priority: 10\n    when: {currency: EUR}\n    then: {pin: adyen}\n"
        "  - id: nl-eur-split\n    priority: 5\n    when: {currency: EUR, country: NL}\n"
        "    then: {split: {stripe: 50, adyen: 50}}\n"
        "  - id: usd-pin\n    when: {currency: USD}\n    then: {pin: stripe}\n"
    )
    [(line, severity, message)] = findings(rules)
    assert (line, severity) == (12, "warning")
    assert message.startswith("rule 'nl-eur-split' is shadowed by higher-priority pin 'eur-adyen'")
    path = tmp_path / "shadow.yaml"
    path.write_text(HEADER + rules)
    assert run("check", str(path)).returncode == 0
    strict = run("check", str(path), "--strict")
    assert strict.returncode == 1
    assert "0 error(s), 1 warning(s)" in strict.stderr


def test_targets_that_can_never_take_the_matched_requests() -> None:
    rules = (
        "  - id: ideal\n    when: {payment_method: ideal}\n"
        "    then: {boost: {paypal: 5, stripe: 5}}\n"
    )
    assert findings(rules) == [
        (
            8,
            "warning",
            "rule 'ideal' boosts 'paypal', which can never take the requests this rule matches "
            "(its routing rules allow no payment method in ['ideal'])",
        )
    ]


def test_unknown_adapter_and_disabled_references() -> None:
    text = """schema_version: 1
version: v1
providers:
  stripe: {}
  mollie: {enabled: false}
scoring: {fallback_order: [mollie, stripe]}
rules:
  - id: m
    then: {boost: {mollie: 3}}
"""
    report = check_rules_text(text, known_adapters=["stripe", "adyen"])
    assert [(p.line, p.message) for p in report.problems] == [
        (5, "no adapter named 'mollie' exists (known: adyen, stripe)"),
        (6, "provider 'mollie' is disabled"),
        (8, "rule 'm' boosts 'mollie', which is disabled"),
    ]
    assert report.exit_status() == 0
    assert report.exit_status(strict=True) == 1


def test_an_unreadable_file_is_an_error() -> None:
    done = run("check", "/nonexistent/rules.yaml")
    assert done.returncode == 1
    assert "cannot read the rules file" in done.stderr


def cond(data: dict[str, object]) -> Condition:
    return Condition.model_validate(data)


@pytest.mark.parametrize(
    ("data", "dead"),
    [
        ({"currency": "EUR", "not": {"currency": "EUR"}}, True),
        (
            {
                "not": {
                    "payment_method": [
                        "card",
                        "paypal",
                        "apple_pay",
                        "google_pay",
                        "ideal",
                        "klarna",
                        "sepa_debit",
                    ]
                }
            },
            True,
        ),
        ({"items": {"lt": 1}}, True),
        ({"items": {"gt": 100}}, True),
        ({"quantity": {"gt": 2, "lt": 3}}, True),
        ({"amount": {"gt": 2, "lt": 3}}, False),
        ({"any": [{"currency": "USD"}, {"currency": "GBP"}], "currency": "EUR"}, True),
        ({"any": [{"currency": "USD"}, {"currency": "EUR"}], "currency": "EUR"}, False),
        ({"not": {"any": [{"currency": "EUR"}, {"country": "NL"}]}, "currency": "EUR"}, True),
        ({"not": {"all": [{"currency": "EUR"}, {"country": "NL"}]}, "currency": "EUR"}, False),
        (
            {"additional_information": [{"key": "k", "values": "a"}, {"key": "k", "values": "b"}]},
            True,
        ),
        ({"locale": "en", "not": {"locale": "en"}}, False),  # not analysed: never claimed dead
        ({"not": {"amount": {"gte": 0}}}, True),
    ],
)
def test_never_matches(data: dict[str, object], dead: bool) -> None:
    assert never_matches(cond(data)) is dead


@pytest.mark.parametrize(
    ("narrow", "wide", "expected"),
    [
        ({"currency": "EUR", "country": "NL"}, {"currency": ["EUR", "USD"]}, True),
        ({"currency": "EUR"}, {"currency": "EUR", "country": "NL"}, False),
        ({"amount": {"gte": 200, "lt": 300}}, {"amount": {"gte": 100}}, True),
        ({"amount": {"gte": 50}}, {"amount": {"gte": 100}}, False),
        ({"amount": {"gt": 100}}, {"amount": {"gte": 100}}, True),
        ({"amount": {"gte": 100}}, {"amount": {"gt": 100}}, False),
        ({"any": [{"currency": "EUR"}, {"currency": "USD"}]}, {"currency": ["EUR", "USD"]}, True),
        ({"currency": "EUR"}, {"any": [{"currency": "EUR"}, {"country": "NL"}]}, True),
        ({"currency": "EUR"}, {"not": {"currency": "USD"}}, True),
        ({"currency": "EUR"}, {"locale": "en"}, False),
        ({"currency": "EUR"}, {"not": {"additional_information": {"key": "x"}}}, False),
    ],
)
def test_implies(narrow: dict[str, object], wide: dict[str, object], expected: bool) -> None:
    assert implies(cond(narrow), cond(wide)) is expected
    assert implies(cond(narrow), None) is True


UNKNOWN_ENABLED = """schema_version: 1
version: v1
providers:
  stripe: {}
  strpie: {currencies: [EUR]}
rules: []
"""


def test_an_enabled_provider_without_an_adapter_is_an_error(tmp_path: Path) -> None:
    report = check_rules_text(UNKNOWN_ENABLED, known_adapters=["stripe", "adyen"])
    assert [(p.line, p.severity, p.message) for p in report.problems] == [
        (
            5,
            "error",
            "provider 'strpie' is enabled but the gateway has no adapter for it "
            "(known: adyen, stripe); fix the name or set enabled: false",
        )
    ]
    assert report.exit_status() == 1
    path = tmp_path / "rules.yaml"
    path.write_text(UNKNOWN_ENABLED)
    done = run("check", str(path))
    assert done.returncode == 1
    assert f"{path}:5: error: providers.strpie: provider 'strpie' is enabled" in done.stderr


def test_no_exploration_with_the_adaptive_learner_is_a_warning() -> None:
    text = """schema_version: 1
version: v1
providers: {stripe: {}, adyen: {}}
scoring:
  exploration: 0
"""
    report = check_rules_text(text, known_adapters=["stripe", "adyen"])
    assert [(p.line, p.severity) for p in report.problems] == [(5, "warning")]
    assert "recovery goes unnoticed" in report.problems[0].message
    fixed = text.replace("exploration: 0", "exploration: {floor: 0.01, ceiling: 0.1}")
    assert check_rules_text(fixed, known_adapters=["stripe", "adyen"]).problems == ()
    older = text.replace("exploration: 0", "exploration: 0\n  learning: {model: decayed}")
    assert check_rules_text(older, known_adapters=["stripe", "adyen"]).problems == ()
