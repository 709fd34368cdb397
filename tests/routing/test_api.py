"""``/api/v1/routing``: rules, simulate (creates nothing) and reload, through a real gateway."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.appkeys import ROUTER, STORE
from gateway.store.memory import MemoryStore
from tests.api.conftest import SEED_BYTES, GatewayFactory, headers, seed
from tests.routing.helpers import ROOT, rules_yaml

READ = ["routing:read"]
ADMIN = ["routing:admin"]


def auth(scopes: list[str]) -> dict[str, str]:
    return headers(None, scopes=scopes)


def replace_in(path: Path, old: str, new: str) -> int:
    """Edit the rules file; returns the (1-based) line ``old`` was on."""
    text = path.read_text()
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new))
    return line


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "routing_rules.yaml"
    path.write_text((ROOT / "routing_rules.yaml").read_text())
    return path


async def test_rules_endpoint_answers_version_hash_and_rules(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.get("/api/v1/routing/rules", headers=auth(READ))
    assert response.status == 200
    body = await response.json()
    raw = (ROOT / "routing_rules.yaml").read_bytes()
    assert body["contentHash"] == hashlib.sha256(raw).hexdigest()
    assert body["version"] == "2024-11-21.1"
    assert body["rulesVersion"] == f"2024-11-21.1@{body['contentHash'][:8]}"
    assert body["lastReloadError"] is None
    assert set(body["rules"]["providers"]) == {"stripe", "adyen", "paypal"}
    assert body["rules"]["providers"]["stripe"]["fees"]["percent"] == "2.9"  # exact, as text
    eur = next(r for r in body["rules"]["rules"] if r["id"] == "eur-sepa-prefers-adyen")
    assert "any" in eur["when"]
    assert (
        await client.get("/api/v1/routing/rules", headers=auth(["sessions:read"]))
    ).status == 403
    assert (await client.get("/api/v1/routing/rules")).status == 401


async def test_simulate_answers_the_full_decision_and_creates_nothing(
    gateway: GatewayFactory,
) -> None:
    store = MemoryStore()
    client = await gateway(store=store)
    response = await client.post("/api/v1/routing/simulate", data=SEED_BYTES, headers=auth(READ))
    assert response.status == 200, await response.text()
    body = await response.json()
    router = client.app[ROUTER]
    assert body["simulated"] is True
    assert body["rulesVersion"] == router.rules_version
    assert body["selectedProvider"] == body["candidates"][0]["provider"]
    assert {c["provider"] for c in body["candidates"]} <= {"stripe", "adyen"}
    for candidate in body["candidates"]:
        assert sum(candidate["components"].values()) == pytest.approx(candidate["score"], abs=5e-4)
    assert {"provider": "paypal", "reason": "adapter does not support payment method card"} in body[
        "excluded"
    ]
    assert "au-cards-split" in body["matchedRules"]
    assert router.counters["decisions"] == 0
    assert client.app[STORE] is store
    assert store._sessions._data == {}  # nothing stored
    assert store._idem._data == {}


async def test_simulate_without_eligible_provider_is_422_with_reasons(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "narrow.yaml"
    path.write_text(rules_yaml({"stripe": {"currencies": ["USD"]}, "adyen": {"enabled": False}}))
    client = await gateway(rules_path=path)
    response = await client.post("/api/v1/routing/simulate", data=SEED_BYTES, headers=auth(READ))
    assert response.status == 422
    body = await response.json()
    assert body["code"] == "NO_AVAILABLE_PROVIDER"
    assert {"provider": "stripe", "reason": "routing rules do not allow currency AUD"} in body[
        "details"
    ]
    assert {"provider": "adyen", "reason": "disabled in the routing rules"} in body["details"]


async def test_simulate_validates_the_body(gateway: GatewayFactory) -> None:
    client = await gateway()
    bad = json.dumps(seed(currency="EURO")).encode()
    response = await client.post("/api/v1/routing/simulate", data=bad, headers=auth(READ))
    assert response.status == 400
    body = await response.json()
    assert any("currency" in m for m in body["message"])
    wrong = await client.post(
        "/api/v1/routing/simulate", data=SEED_BYTES, headers=auth(["sessions:write"])
    )
    assert wrong.status == 403


async def test_reload_swaps_valid_rules_and_every_201_names_its_version(
    gateway: GatewayFactory, rules_file: Path
) -> None:
    client = await gateway(rules_path=rules_file, rules_watch_interval_seconds=3600)
    unchanged = await client.post("/api/v1/routing/reload", headers=auth(ADMIN))
    assert unchanged.status == 200
    assert (await unchanged.json())["changed"] is False
    assert (await client.post("/api/v1/routing/reload", headers=auth(READ))).status == 403

    replace_in(rules_file, 'version: "2024-11-21.1"', 'version: "2024-11-22.1"')
    response = await client.post("/api/v1/routing/reload", headers=auth(ADMIN))
    assert response.status == 200
    result = await response.json()
    assert result["ok"] is True
    assert result["changed"] is True
    assert result["rulesVersion"].startswith("2024-11-22.1@")
    created = await client.post(
        "/api/v1/sessions", data=SEED_BYTES, headers=headers("api-reload-1")
    )
    assert created.status == 201, await created.text()
    assert (await created.json())["routing"]["rulesVersion"] == result["rulesVersion"]


async def test_an_invalid_reload_is_refused_and_visible_in_readyz(
    gateway: GatewayFactory, rules_file: Path
) -> None:
    client = await gateway(rules_path=rules_file, rules_watch_interval_seconds=3600)
    before = client.app[ROUTER].rules_version
    line = replace_in(rules_file, "percent: 2.9", "percent: lots")
    response = await client.post("/api/v1/routing/reload", headers=auth(ADMIN))
    assert response.status == 422
    body: dict[str, Any] = await response.json()
    assert body["code"] == "RULES_INVALID"
    assert body["rulesVersion"] == before
    assert any(f":{line}: error: providers.stripe.fees.percent" in d for d in body["details"])
    ready = await (await client.get("/readyz")).json()
    assert ready["checks"]["rules"]["version"] == before
    assert "providers.stripe.fees.percent" in ready["checks"]["rules"]["lastReloadError"]
    created = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("api-bad-1"))
    assert created.status == 201
    assert (await created.json())["routing"]["rulesVersion"] == before
