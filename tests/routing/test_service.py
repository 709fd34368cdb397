"""The Router: hot reload (valid swaps in, invalid is refused), adapters, outcome learning."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.routing.rules import RulesError
from gateway.routing.service import ReloadResult, Router, enabled_providers
from gateway.settings import SettingsError
from tests.routing.helpers import OPEN, request, rules_yaml

CAPS = {"stripe": OPEN, "adyen": OPEN, "paypal": OPEN}


def write(path: Path, version: str, pin: str = "stripe") -> str:
    put(path, rules_yaml(rules=[{"id": "pin", "then": {"pin": pin}}], version=version))
    return version


def put(path: Path, text: str) -> None:
    """Write the rules file (a plain function: the tests' event loop must not block on it)."""
    path.write_text(text)


async def until(condition, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "routing_rules.yaml"
    write(path, "v1")
    return path


async def test_a_valid_change_swaps_in_while_requests_are_in_flight(rules_file: Path) -> None:
    router = Router(rules_file, CAPS, watch_interval_s=0.02)
    seen: list[tuple[str, str]] = []
    stop = asyncio.Event()

    async def checkout(n: int) -> None:
        while not stop.is_set():
            decision = router.decide(request(orderReference=f"O{n}"), "m1")
            await asyncio.sleep(0.001)  # the provider call: the decision must stay whole
            assert decision.ranked, decision.excluded
            seen.append((decision.rules_version.split("@")[0], decision.ranked[0].provider))

    async with router.running():
        workers = [asyncio.create_task(checkout(n)) for n in range(20)]
        await asyncio.sleep(0.05)
        write(rules_file, "v2", pin="adyen")
        await until(lambda: router.rules.version == "v2")
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)
    assert {("v1", "stripe"), ("v2", "adyen")} == set(seen)
    assert router.counters["reload_ok"] == 1
    assert router.last_reload_error is None


async def test_an_invalid_change_keeps_the_old_rules_and_reports_every_error(
    rules_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router(rules_file, CAPS, watch_interval_s=0.02)
    results: list[ReloadResult] = []
    router.add_reload_listener(results.append)
    old = router.rules_version
    async with router.running():
        put(
            rules_file,
            "schema_version: 1\nversion: v2\nproviders:\n"
            "  stripe: {bogus: 1}\n  adyen: {currencies: [EURO]}\n",
        )
        with caplog.at_level(logging.ERROR, logger="gateway.routing"):
            await until(lambda: router.last_reload_error is not None)
        assert router.rules_version == old
        assert router.decide(request(), "m1").rules_version == old
        assert "routing_rules.yaml:4: error: providers.stripe.bogus: unknown key 'bogus'" in (
            router.last_reload_error or ""
        )
        assert ":5: error: providers.adyen.currencies[0]" in (router.last_reload_error or "")
        assert len([r for r in caplog.records if "routing rules refused" in r.getMessage()]) == 2
        await asyncio.sleep(0.1)  # the watcher does not retry the same bad bytes
        assert router.counters["reload_failed"] == 1
        assert [r.ok for r in results] == [False]

        write(rules_file, "v3", pin="paypal")  # fixing the file recovers
        await until(lambda: router.rules.version == "v3")
        assert router.last_reload_error is None
        assert router.decide(request(), "m1").ranked[0].provider == "paypal"
    assert router.counters["reload_ok"] == 1


async def test_a_half_written_file_is_refused_then_the_full_one_loads(rules_file: Path) -> None:
    router = Router(rules_file, CAPS)
    full = rules_yaml(rules=[{"id": "pin", "then": {"pin": "adyen"}}], version="v2")
    put(rules_file, full[: len(full) // 2])
    assert not (await router.reload()).ok
    assert router.rules.version == "v1"
    put(rules_file, full)
    result = await router.reload()
    assert result.ok
    assert result.changed
    assert router.rules.version == "v2"
    assert result.rules_version == router.rules_version


async def test_reload_of_unchanged_bytes_changes_nothing(rules_file: Path) -> None:
    router = Router(rules_file, CAPS)
    result = await router.reload()
    assert result == ReloadResult(True, False, router.rules_version, router.content_hash)
    assert result.as_dict()["changed"] is False


async def test_a_vanished_file_is_reported_once_and_routing_continues(rules_file: Path) -> None:
    router = Router(rules_file, CAPS, watch_interval_s=0.02)
    async with router.running():
        await asyncio.to_thread(rules_file.unlink)
        await until(lambda: router.last_reload_error is not None)
        await asyncio.sleep(0.1)
        assert router.counters["reload_failed"] == 1
        assert "cannot read the rules file" in (router.last_reload_error or "")
        assert router.decide(request(), "m1").ranked
        write(rules_file, "v5")
        await until(lambda: router.rules.version == "v5")


def test_an_invalid_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("schema_version: 1\nversion: v1\nproviders: {}\n")
    with pytest.raises(RulesError):
        Router(path, CAPS)
    with pytest.raises(SettingsError, match="routing rules are invalid"):
        enabled_providers(path)


def test_enabled_providers_of_the_repository_file() -> None:
    from tests.routing.helpers import ROOT

    assert enabled_providers(ROOT / "routing_rules.yaml") == ["adyen", "paypal", "stripe"]


def test_only_the_adapters_given_are_routed_to(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rules_yaml({"stripe": {}, "adyen": {}, "mollie": {}}))
    router = Router(path, {"stripe": OPEN})
    decision = router.decide(request(), "m1", unavailable={})
    assert [c.provider for c in decision.ranked] == ["stripe"]
    assert {e.provider: e.reason for e in decision.excluded} == {
        "adyen": "no adapter is loaded for this provider",
        "mollie": "no adapter is loaded for this provider",
    }
    assert router.provider_names == frozenset({"stripe"})
    assert decision.decision_id.startswith("rd_")
    assert router.decide(request(), "m1").decision_id != decision.decision_id


async def test_outcomes_feed_the_snapshot_through_the_refresh_loop(rules_file: Path) -> None:
    put(rules_file, rules_yaml({"stripe": {}, "adyen": {}}))
    # the background loop, not a manual refresh, must pick the outcomes up
    router = Router(rules_file, CAPS, refresh_interval_s=0.02)
    async with router.running():
        assert router.decide(request(), "m1").ranked[0].provider == "adyen"
        for _ in range(40):
            await router.record_creation("adyen", "timeout", 5000.0, request())
            await router.record_creation("stripe", "created", 150.0, request())
        await router.record_payment("stripe", True, "AUD", "AU")
        await router.flush()
        await until(lambda: router.stats.segments.get(("stripe", "all", "")) is not None)
        decision = router.decide(request(), "m1")
    assert decision.ranked[0].provider == "stripe"
    stripe = decision.ranked[0]
    assert stripe.details["latencyMs"] < 400
    assert router.stats.segments[("stripe", "all", "")].payment_ok == pytest.approx(1.0, rel=1e-3)
    assert router.status()["rulesVersion"] == router.rules_version


async def test_a_failing_stats_store_never_fails_a_checkout(rules_file: Path) -> None:
    class Broken:
        async def add(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("redis down")

        async def load(self, **kwargs: object) -> dict[object, object]:
            raise ConnectionError("redis down")

        async def close(self) -> None:
            return None

    router = Router(rules_file, CAPS, Broken())  # type: ignore[arg-type]
    async with router.running():
        await router.record_creation("stripe", "created", 10.0, request())
        await router.flush()
        assert router.decide(request(), "m1").ranked
    assert router.counters["stats_write_failed"] == 1
    assert router.counters["stats_refresh_failed"] >= 1


UNKNOWN_ENABLED = rules_yaml({"stripe": {}, "strpie": {}})


def test_enabling_a_provider_without_an_adapter_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(UNKNOWN_ENABLED)
    with pytest.raises(SettingsError) as refused:
        enabled_providers(path)
    line = UNKNOWN_ENABLED.splitlines().index("  strpie: {}") + 1
    assert f"{path}:{line}: error: providers.strpie: provider 'strpie' is enabled" in str(
        refused.value
    )
    assert "(known: adyen, paypal, stripe)" in str(refused.value)


async def test_a_reload_enabling_a_provider_without_an_adapter_is_refused(
    rules_file: Path,
) -> None:
    router = Router(rules_file, CAPS)
    old = router.rules_version
    put(rules_file, UNKNOWN_ENABLED)
    result = await router.reload()
    assert not result.ok
    assert router.rules_version == old
    assert "provider 'strpie' is enabled but the gateway has no adapter" in (
        router.last_reload_error or ""
    )
