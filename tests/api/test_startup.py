"""Start-up refuses configurations that would be unsafe or broken, saying what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from gateway.app import check_startup, create_app
from gateway.appkeys import HTTP_CLIENT
from gateway.routing.rules import RulesError
from gateway.settings import Settings, SettingsError
from tests.api.conftest import JWT_SECRET, ROOT

EVERY_PROVIDER: dict[str, object] = {
    "provider_stripe_base_url": "https://api.stripe.com",
    "provider_stripe_api_key": "sk_live_x",
    "provider_stripe_webhook_secret": "whsec_x",
    "provider_adyen_base_url": "https://checkout-test.adyen.com",
    "provider_adyen_api_key": "k",
    "provider_adyen_merchant_account": "M",
    "provider_adyen_hmac_key": "AB",
    "provider_paypal_base_url": "https://api-m.paypal.com",
    "provider_paypal_client_id": "c",
    "provider_paypal_client_secret": "s",
    "provider_paypal_webhook_id": "WH1",
}


def production(**values: object) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        env="production",
        jwt_secret=JWT_SECRET,
        rules_path=ROOT / "routing_rules.yaml",
        **values,
    )


def test_production_needs_every_enabled_provider_configured() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_PROVIDER_ADYEN_BASE_URL"):
        check_startup(production())
    without_secret = {
        k: v for k, v in EVERY_PROVIDER.items() if k != "provider_stripe_webhook_secret"
    }
    with pytest.raises(SettingsError, match="GATEWAY_PROVIDER_STRIPE_WEBHOOK_SECRET"):
        check_startup(production(**without_secret))


def test_production_with_every_setting_starts() -> None:
    providers = check_startup(production(**EVERY_PROVIDER))
    assert set(providers) == {"stripe", "adyen", "paypal"}


def test_sandbox_fills_missing_providers_with_the_builtin_sandbox() -> None:
    settings = Settings(_env_file=None, jwt_secret=JWT_SECRET, port=9999)  # type: ignore[call-arg]
    config = settings.provider("stripe")
    assert config.sandbox
    assert config.base_url == "http://127.0.0.1:9999/sandbox/stripe"


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gateway_serve_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_ENV"] = "production"
    done = serve(env)
    assert done.returncode == 2
    assert "configuration error" in done.stderr
    assert "GATEWAY_JWT_SECRET" in done.stderr
    env["GATEWAY_JWT_SECRET"] = JWT_SECRET
    done = serve(env)
    assert done.returncode == 2
    assert "GATEWAY_PROVIDER_" in done.stderr


def test_several_workers_need_the_shared_store() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, jwt_secret=JWT_SECRET, workers=2, rules_path=ROOT / "routing_rules.yaml"
    )
    with pytest.raises(SettingsError, match="GATEWAY_STORE=redis") as both:
        check_startup(settings)
    assert "GATEWAY_COORDINATION=redis" in str(both.value)
    check_startup(settings.model_copy(update={"store": "redis"}))  # coordination follows


@pytest.mark.parametrize(
    ("store", "coordination", "expected"),
    [
        ("memory", None, "memory"),
        ("redis", None, "redis"),
        ("memory", "redis", "redis"),
        ("redis", "memory", "memory"),
        ("postgres", None, "memory"),
        ("postgres", "redis", "redis"),
    ],
)
def test_coordination_defaults_to_redis_with_the_redis_store(
    store: str, coordination: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_STORE", store)
    if coordination is None:
        monkeypatch.delenv("GATEWAY_COORDINATION", raising=False)
    else:
        monkeypatch.setenv("GATEWAY_COORDINATION", coordination)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.coordination_backend == expected


def test_several_workers_need_shared_coordination_too() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        jwt_secret=JWT_SECRET,
        workers=2,
        rules_path=ROOT / "routing_rules.yaml",
        store="redis",
        coordination="memory",
    )
    with pytest.raises(SettingsError) as refused:
        check_startup(settings)
    message = str(refused.value)
    assert "GATEWAY_COORDINATION=memory" in message
    assert "set GATEWAY_COORDINATION=redis" in message
    assert "GATEWAY_STORE=redis" not in message  # the store is shared already


def test_gateway_serve_refuses_workers_with_memory_coordination() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_RULES_PATH": str(ROOT / "routing_rules.yaml"),
            "GATEWAY_STORE": "redis",
            "GATEWAY_COORDINATION": "memory",
            "GATEWAY_WORKERS": "2",
        }
    )
    done = serve(env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "set GATEWAY_COORDINATION=redis" in done.stderr


def test_gateway_serve_names_an_unknown_provider_in_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    data = yaml.safe_load((ROOT / "routing_rules.yaml").read_text())
    data["providers"]["paypall"] = data["providers"]["paypal"]
    rules.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_RULES_PATH": str(rules)})
    done = serve(env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "gateway: configuration error: the routing rules are invalid" in done.stderr
    assert f"{rules}:" in done.stderr
    assert "provider 'paypall' is enabled but the gateway has no adapter for it" in done.stderr


async def test_a_start_up_failing_half_way_closes_the_client_session(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "routing_rules.yaml").read_text())
    settings = Settings(_env_file=None, jwt_secret=JWT_SECRET, rules_path=rules)  # type: ignore[call-arg]
    app = create_app(settings)
    rules.unlink()  # the router reads the rules again when the app starts: that start fails
    runner = web.AppRunner(app)
    with pytest.raises(RulesError, match="cannot read the rules file"):
        await runner.setup()
    assert app[HTTP_CLIENT].closed  # left open, it warned when collected, in some other test
