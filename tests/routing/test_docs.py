"""Every YAML example of the README's routing rules reference is valid rules."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway.routing.rules import load_rules_text
from tests.routing.helpers import ROOT

_README = (ROOT / "README.md").read_text()
DOC = _README[_README.index("## Routing rules reference") : _README.index("## Operations")]
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S) if "{...}" not in b]
PROVIDERS = {"stripe": {}, "adyen": {}, "paypal": {}}


def whole(block: str) -> dict[str, Any]:
    data = yaml.safe_load(block)
    doc: dict[str, Any] = {"schema_version": 1, "version": "doc", "providers": PROVIDERS}
    if "when" in data or "then" in data:
        rule = {"id": "example", "then": {"boost": {"adyen": 1}}, **data}
        doc["rules"] = [rule]
    else:
        doc.update(data)
    return doc


def test_the_reference_has_examples() -> None:
    assert len(BLOCKS) >= 8
    for key in (
        "boost",
        "penalize",
        "exclude",
        "pin",
        "split",
        "all",
        "any",
        "not",
        "locale",
        "additional_information",
        "quantity",
        "items",
        "merchant",
        "capture_method",
        "amount_per_currency",
        "fallback_order",
        "exploration",
        "half_life_seconds",
    ):
        assert f"{key}:" in DOC, key


@pytest.mark.parametrize("block", BLOCKS)
def test_example_is_valid(block: str) -> None:
    load_rules_text(yaml.safe_dump(whole(block)))
