"""What the gateway records, measured as deltas of the process registry around real requests
(the gateway on a real socket, the sandbox providers on another)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.routing.service import Router
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.store.timing import instrument_store
from tests.api.conftest import JWT_SECRET, ROOT, SEED_BYTES, GatewayFactory, headers, seed
from tests.contracts.strict_sandbox import StrictSandbox, start_strict_sandbox
from tests.routing.helpers import OPEN, rules_yaml


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Values of some samples now; ``changed()`` gives how much each moved since."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = [sample(name, **labels) for name, labels in samples]

    def changed(self) -> list[float]:
        return [
            sample(name, **labels) - before
            for (name, labels), before in zip(self.samples, self.before, strict=True)
        ]


def card_order(ref: str) -> dict[str, Any]:
    body = seed(orderReference=ref, currency="EUR")
    for address in ("billingAddress", "shippingAddress"):
        body["customer"][address]["country"] = "DE"
    return body


async def first_choice(client: Any, body: dict[str, Any]) -> list[str]:
    answer = await client.post("/api/v1/routing/simulate", json=body, headers=headers(None))
    return [c["provider"] for c in (await answer.json())["candidates"]]


async def test_http_metrics_label_route_templates_never_raw_paths(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    session_id = str(uuid.uuid4())
    template = "/api/v1/sessions/{sessionId}"
    delta = Delta(
        ("gateway_http_requests_total", {"route": template, "method": "GET", "status": "404"}),
        ("gateway_http_requests_total", {"route": "unmatched", "method": "GET", "status": "404"}),
        ("gateway_http_requests_total", {"route": "unmatched", "method": "OTHER", "status": "404"}),
        ("gateway_http_request_duration_seconds_count", {"route": template, "method": "GET"}),
    )
    answer = await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))
    assert answer.status == 404
    assert (await client.get(f"/secret/{session_id}")).status == 404
    assert (await client.request("PROPFIND", f"/dav/{session_id}")).status == 404
    assert delta.changed() == [1, 1, 1, 1]
    exposition = await (await client.get("/metrics")).text()
    assert session_id not in exposition
    assert "PROPFIND" not in exposition


async def test_metrics_endpoint_serves_the_text_format(gateway: GatewayFactory) -> None:
    client = await gateway()
    answer = await client.get("/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(await answer.text())}
    assert {"gateway_http_requests", "gateway_rules_info", "gateway_circuit_state"} <= families


async def test_a_create_counts_session_decision_provider_call_store_and_idempotency(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    body = card_order("ORD-M-1")
    provider = (await first_choice(client, body))[0]
    delta = Delta(
        (
            "gateway_sessions_created_total",
            {"provider": provider, "currency": "EUR", "merchant": "other"},
        ),
        ("gateway_idempotency_requests_total", {"outcome": "new"}),
        ("gateway_idempotency_requests_total", {"outcome": "replay"}),
        ("gateway_idempotency_requests_total", {"outcome": "mismatch"}),
        ("gateway_routing_decisions_total", {"provider": provider, "rule": "default"}),
        ("gateway_routing_decision_duration_seconds_count", {}),
        ("gateway_routing_score_count", {"provider": provider, "rank": "1"}),
        (
            "gateway_provider_requests_total",
            {"provider": provider, "operation": "create_session", "outcome": "ok"},
        ),
        (
            "gateway_provider_request_duration_seconds_count",
            {"provider": provider, "operation": "create_session"},
        ),
        ("gateway_session_create_overhead_seconds_count", {}),
        ("gateway_store_operation_duration_seconds_count", {"operation": "begin_create"}),
        ("gateway_store_operation_duration_seconds_count", {"operation": "commit_create"}),
        (
            "gateway_session_transitions_total",
            {"from_status": "none", "to_status": "PENDING", "source": "gateway"},
        ),
        (
            "gateway_http_requests_total",
            {"route": "/api/v1/sessions", "method": "POST", "status": "201"},
        ),
        (
            "gateway_http_requests_total",
            {"route": "/api/v1/sessions", "method": "POST", "status": "422"},
        ),
    )
    first = await client.post("/api/v1/sessions", json=body, headers=headers("m-1"))
    assert first.status == 201, await first.text()
    replay = await client.post("/api/v1/sessions", json=body, headers=headers("m-1"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = await client.post(
        "/api/v1/sessions", json=card_order("ORD-M-2"), headers=headers("m-1")
    )
    assert other.status == 422
    # a dry run is not a decision
    await first_choice(client, body)
    assert delta.changed() == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 2, 1]


async def test_an_in_flight_key_is_counted(gateway: GatewayFactory, sandbox: Any) -> None:
    import asyncio

    client = await gateway()
    body = card_order("ORD-M-IF")
    provider = (await first_choice(client, body))[0]
    async with aiohttp.ClientSession() as http:
        await http.post(
            str(sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": provider, "latencyMs": 500},
        )
    delta = Delta(("gateway_idempotency_requests_total", {"outcome": "in_flight"}))
    slow = asyncio.create_task(client.post("/api/v1/sessions", json=body, headers=headers("if")))
    await asyncio.sleep(0.2)
    assert (await client.post("/api/v1/sessions", json=body, headers=headers("if"))).status == 409
    assert (await slow).status == 201
    assert delta.changed() == [1]


async def test_failovers_provider_errors_and_the_circuit_gauge(
    gateway: GatewayFactory, sandbox: Any
) -> None:
    client = await gateway(circuit_failure_threshold=2, circuit_open_seconds=60)
    ranked = await first_choice(client, card_order("ORD-M-F"))
    first, second = ranked[:2]
    async with aiohttp.ClientSession() as http:
        await http.post(
            str(sandbox.make_url("/sandbox/admin/faults")),
            json={"provider": first, "errorRate": 1.0},
        )
    delta = Delta(
        (
            "gateway_failovers_total",
            {"from_provider": first, "to_provider": second, "reason": "unavailable"},
        ),
        (
            "gateway_provider_requests_total",
            {"provider": first, "operation": "create_session", "outcome": "server_error"},
        ),
        (
            "gateway_sessions_created_total",
            {"provider": second, "currency": "EUR", "merchant": "other"},
        ),
    )
    for i in range(3):
        answer = await client.post(
            "/api/v1/sessions", json=card_order(f"ORD-M-F{i}"), headers=headers(f"f-{i}")
        )
        assert answer.status == 201
    # two failures open the circuit; the third order goes to the second provider directly
    failovers, server_errors, created = delta.changed()
    assert (failovers, created) == (2, 3)
    # the two 500s may have created sessions there (orphans): the clean-up may re-send one of
    # the creates before the circuit opens, never after
    assert 2 <= server_errors <= 4
    assert sample("gateway_circuit_state", provider=first) == 2
    assert sample("gateway_circuit_state", provider=second) == 0


async def test_merchant_ids_are_labels_only_when_listed(gateway: GatewayFactory) -> None:
    client = await gateway(metrics_merchants="merchant-1, merchant-9")
    body = card_order("ORD-M-L")
    provider = (await first_choice(client, body))[0]
    delta = Delta(
        (
            "gateway_sessions_created_total",
            {"provider": provider, "currency": "EUR", "merchant": "merchant-1"},
        ),
        (
            "gateway_sessions_created_total",
            {"provider": provider, "currency": "EUR", "merchant": "other"},
        ),
    )
    listed = await client.post("/api/v1/sessions", json=body, headers=headers("l-1"))
    assert listed.status == 201
    unlisted = await client.post(
        "/api/v1/sessions", json=body, headers=headers("l-2", merchant="merchant-2")
    )
    assert unlisted.status == 201
    assert delta.changed() == [1, 1]
    exposition = await (await client.get("/metrics")).text()
    assert 'merchant="merchant-2"' not in exposition


async def test_rules_reload_metrics_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "routing_rules.yaml"
    path.write_text(rules_yaml(version="obs-v1"))
    router = Router(path, {"stripe": OPEN, "adyen": OPEN, "paypal": OPEN})
    v1 = router.content_hash[:12]
    assert sample("gateway_rules_info", version="obs-v1", hash=v1) == 1
    assert sample("gateway_rules_last_reload_success") == 1
    delta = Delta(
        ("gateway_rules_reloads_total", {"outcome": "success"}),
        ("gateway_rules_reloads_total", {"outcome": "unchanged"}),
        ("gateway_rules_reloads_total", {"outcome": "error"}),
    )
    assert (await router.reload()).ok  # same bytes
    path.write_text(rules_yaml(version="obs-v2"))
    assert (await router.reload()).changed
    v2 = router.content_hash[:12]
    assert sample("gateway_rules_info", version="obs-v1", hash=v1) == 0
    assert sample("gateway_rules_info", version="obs-v2", hash=v2) == 1
    good = path.read_text()
    path.write_text("schema_version: [\n")
    assert not (await router.reload()).ok
    assert sample("gateway_rules_last_reload_success") == 0
    assert sample("gateway_rules_info", version="obs-v2", hash=v2) == 1
    path.write_text(good)  # put back: the watcher sees the active bytes and recovers
    assert await router.check_file() is None
    assert sample("gateway_rules_last_reload_success") == 1
    assert delta.changed() == [1, 1, 1]


async def test_store_operations_are_timed_and_failures_counted() -> None:
    class Flaky(MemoryStore):
        async def get_session(self, session_id: str) -> Any:
            raise StoreUnavailable("down")

    store = instrument_store(Flaky())
    assert instrument_store(store) is store  # idempotent: no double counting
    delta = Delta(
        ("gateway_store_operation_duration_seconds_count", {"operation": "get_session"}),
        ("gateway_store_errors_total", {"operation": "get_session"}),
        ("gateway_store_operation_duration_seconds_count", {"operation": "ping"}),
    )
    with pytest.raises(StoreUnavailable):
        await store.get_session("x")
    await store.ping()
    assert delta.changed() == [1, 1, 1]


@pytest.fixture
async def strict_sandbox(aiohttp_server: Any) -> StrictSandbox:
    return await start_strict_sandbox(aiohttp_server)


async def test_x_request_id_reaches_every_provider_within_its_contract(
    aiohttp_client: Any, strict_sandbox: StrictSandbox
) -> None:
    base = strict_sandbox.url("/sandbox")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        env="sandbox",
        jwt_secret=JWT_SECRET,
        rules_path=ROOT / "routing_rules.yaml",
        sandbox_embedded=False,
        provider_stripe_base_url=f"{base}/stripe",
        provider_adyen_base_url=f"{base}/adyen",
        provider_paypal_base_url=f"{base}/paypal",
    )
    client = await aiohttp_client(create_app(settings))
    ideal = seed(orderReference="ORD-X-2", currency="EUR", paymentMethod="ideal")
    for address in ("billingAddress", "shippingAddress"):
        ideal["customer"][address]["country"] = "NL"
    orders = [
        card_order("ORD-X-1"),
        ideal,
        seed(orderReference="ORD-X-3", paymentMethod="paypal"),
    ]
    for n, body in enumerate(orders):
        answer = await client.post(
            "/api/v1/sessions",
            json=body,
            headers={**headers(f"x-{n}"), "X-Request-ID": f"req-obs-{n}"},
        )
        assert answer.status == 201, await answer.text()
        assert answer.headers["X-Request-ID"] == f"req-obs-{n}"
    seen = {r.provider: r.headers.get("X-Request-ID") for r in strict_sandbox.requests}
    assert set(seen) == {"stripe", "adyen", "paypal"}
    assert sorted(seen.values()) == ["req-obs-0", "req-obs-1", "req-obs-2"]
    assert all(not r.problems for r in strict_sandbox.requests)


async def test_a_generated_request_id_is_returned_and_sent(gateway: GatewayFactory) -> None:
    client = await gateway()
    answer = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=headers("gen"))
    generated = answer.headers["X-Request-ID"]
    assert len(generated) == 32
    bad = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert bad.headers["X-Request-ID"] != "bad id with spaces"
