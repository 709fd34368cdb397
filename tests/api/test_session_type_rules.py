"""What ``sessionType`` (setup, next_in_series) requires of a create request: every rule is a
400 in the seed's envelope naming its field, also when another field fails validation too,
and the new fields are part of the idempotency fingerprint."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.domain.models import parse_checkout_request
from gateway.idempotency import fingerprint
from tests.api.conftest import GatewayFactory, headers, seed

MANDATE = "0b6f8c1e-2f4a-4c1d-9e3b-5a7d6c8e9f01"
SETUP = {"sessionType": "setup", "amount": {"total": 0}}


def _without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        body.pop(name, None)
    return body


def _series(**changes: Any) -> dict[str, Any]:
    body = _without(seed(sessionType="next_in_series", mandateSessionId=MANDATE), "redirectUrls")
    body.update(changes)
    return body


CASES = [
    pytest.param(
        seed(sessionType="setup"),
        ["amount.total: must be 0 for a setup session (it charges nothing)"],
        id="setup-total-not-zero",
    ),
    pytest.param(
        _without(seed(**SETUP, captureMethod="manual"), "orderItems"),
        ["captureMethod: a setup session charges nothing; must be automatic"],
        id="setup-manual-capture",
    ),
    pytest.param(
        _without(seed(**SETUP, mandateSessionId=MANDATE), "orderItems"),
        ["mandateSessionId: only allowed for next_in_series"],
        id="setup-with-mandate",
    ),
    pytest.param(
        _without(seed(**SETUP), "orderItems", "redirectUrls"),
        ["redirectUrls: Field required"],
        id="setup-without-redirects",
    ),
    pytest.param(
        _without(seed(), "orderItems"),
        ["orderItems: Field required"],
        id="one-time-without-items",
    ),
    pytest.param(
        seed(mandateSessionId=MANDATE),
        ["mandateSessionId: only allowed for next_in_series"],
        id="one-time-with-mandate",
    ),
    pytest.param(
        _without(_series(), "mandateSessionId"),
        ["mandateSessionId: Field required for next_in_series"],
        id="series-without-mandate",
    ),
    pytest.param(
        _series(redirectUrls=seed()["redirectUrls"]),
        ["redirectUrls: not allowed for next_in_series (the customer is not present)"],
        id="series-with-redirects",
    ),
    pytest.param(
        _without(_series(), "orderItems"),
        ["orderItems: Field required"],
        id="series-without-items",
    ),
    pytest.param(
        _series(mandateSessionId="ses_not-a-uuid"),
        [
            "mandateSessionId: String should match pattern "
            "'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"
        ],
        id="series-mandate-not-a-session-id",
    ),
    pytest.param(
        # another field fails validation: the session-type rules are still all reported
        _without(_series(currency="aud", redirectUrls=seed()["redirectUrls"]), "mandateSessionId"),
        [
            "currency: String should match pattern '^[A-Z]{3}$'",
            "mandateSessionId: Field required for next_in_series",
            "redirectUrls: not allowed for next_in_series (the customer is not present)",
        ],
        id="series-rules-next-to-another-problem",
    ),
    pytest.param(
        _without(seed(sessionType="setup", customer={"email": "nope"}), "redirectUrls"),
        [
            "customer.email: value is not a valid email address",
            "amount.total: must be 0 for a setup session (it charges nothing)",
            "redirectUrls: Field required",
        ],
        id="setup-rules-next-to-another-problem",
    ),
]


@pytest.mark.parametrize(("body", "problems"), CASES)
async def test_each_session_type_rule_is_a_400_naming_its_field(
    gateway: GatewayFactory, body: dict[str, Any], problems: list[str]
) -> None:
    client = await gateway()
    response = await client.post("/api/v1/sessions", json=body, headers=headers("rules-1"))
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["error"] == "Bad Request"
    assert answer["statusCode"] == 400
    assert answer["message"] == problems
    assert answer["requestId"]


async def test_an_unknown_session_type_is_named_once(gateway: GatewayFactory) -> None:
    client = await gateway()
    body = _without(seed(sessionType="subscription"), "redirectUrls")
    response = await client.post("/api/v1/sessions", json=body, headers=headers("rules-2"))
    assert response.status == 400
    [problem] = (await response.json())["message"]
    assert problem.startswith("sessionType: Input should be ")


def test_a_setup_request_without_order_lines_is_valid() -> None:
    request = parse_checkout_request(orjson.dumps(_without(seed(**SETUP), "orderItems")))
    assert request.sessionType == "setup"
    assert request.lines == []
    assert request.saves_payment_method


def test_the_fingerprint_covers_the_session_type_and_the_mandate() -> None:
    series = parse_checkout_request(orjson.dumps(_series()))
    other = parse_checkout_request(
        orjson.dumps(_series(mandateSessionId="0b6f8c1e-2f4a-4c1d-9e3b-5a7d6c8e9f02"))
    )
    one_time = parse_checkout_request(orjson.dumps(seed()))
    first = parse_checkout_request(orjson.dumps(seed(sessionType="first_in_series")))
    assert len({fingerprint(r) for r in (series, other, one_time, first)}) == 4
    assert fingerprint(series) == fingerprint(parse_checkout_request(orjson.dumps(_series())))


def test_the_readme_examples_are_valid_requests() -> None:
    """The curl bodies of the README's "Session types" section parse as the API parses them."""
    import re

    from tests.api.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Session types") : text.index("## Providers and going live")]
    bodies = re.findall(r"-d '(\{.*?\})'", section, re.S)
    assert len(bodies) == 2
    kinds = []
    for body in bodies:
        raw = body.replace("'\"$SETUP_ID\"'", MANDATE)
        kinds.append(parse_checkout_request(raw.encode()).sessionType)
    assert kinds == ["setup", "next_in_series"]
