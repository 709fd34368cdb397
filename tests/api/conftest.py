"""Fixtures for the HTTP API: a real sandbox server, the gateway on a real socket, tokens."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer

from gateway.app import create_app
from gateway.auth import Authenticator
from gateway.server import GatewayRunner
from gateway.settings import Settings
from gateway.store.base import RecordStore
from gateway.store.coordination import Coordination
from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
SEED = json.loads((ROOT / "tests/fixtures/seed_request.json").read_text())
SEED_BYTES = (ROOT / "tests/fixtures/seed_request.json").read_bytes()
JWT_SECRET = "test-secret-0123456789-0123456789-abcdef"
ALL_SCOPES = ["sessions:write", "sessions:read", "refunds:write", "routing:read", "routing:admin"]

GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class GatewayTestServer(TestServer):
    """A test server run by ``gateway serve``'s runner (protocol errors in the envelope)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    """The sandbox providers on their own real socket."""
    server: TestServer = await aiohttp_server(
        create_sandbox_root(SandboxConfig(expiry_sweep_seconds=0, random_seed=7))
    )
    return server


def sandbox_url(sandbox: TestServer) -> str:
    return str(sandbox.make_url("/sandbox")).rstrip("/")


@pytest.fixture
def make_settings(sandbox: TestServer) -> Callable[..., Settings]:
    """Settings pointing every provider at the test sandbox; keyword overrides win."""

    def factory(**overrides: Any) -> Settings:
        base = sandbox_url(sandbox)
        values: dict[str, Any] = {
            "env": "sandbox",
            "jwt_secret": JWT_SECRET,
            "rules_path": ROOT / "routing_rules.yaml",
            "sandbox_embedded": False,
            "provider_stripe_base_url": f"{base}/stripe",
            "provider_adyen_base_url": f"{base}/adyen",
            "provider_paypal_base_url": f"{base}/paypal",
            "provider_timeout_seconds": 2.0,
            "request_deadline_seconds": 5.0,
            "idempotency_lease_seconds": 10,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory


@pytest.fixture
def gateway(
    store_factory: Any,
    coordination_factory: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
) -> GatewayFactory:
    """Start a gateway on a real socket:
    ``await gateway(store=..., coordination=..., **setting_overrides)``.

    Stores and coordination a test makes with the factories are closed only after its gateways
    have stopped (the factories are set up first, so they are torn down last)."""

    async def factory(
        store: RecordStore | None = None,
        coordination: Coordination | None = None,
        **overrides: Any,
    ) -> TestClient[Any, Any]:
        settings = make_settings(**overrides)
        app = create_app(settings, store=store, coordination=coordination)
        server: BaseTestServer = GatewayTestServer(app)
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client

    return factory


def token(merchant: str = "merchant-1", scopes: list[str] | None = None, ttl: int = 600) -> str:
    settings = Settings(_env_file=None, jwt_secret=JWT_SECRET)  # type: ignore[call-arg]
    return Authenticator(settings).issue(merchant, scopes or ALL_SCOPES, ttl)


def headers(
    key: str | None = "key-1", merchant: str = "merchant-1", scopes: list[str] | None = None
) -> dict[str, str]:
    out = {"Authorization": f"Bearer {token(merchant, scopes)}", "Content-Type": "application/json"}
    if key is not None:
        out["Idempotency-Key"] = key
    return out


def seed(**changes: Any) -> dict[str, Any]:
    """A deep copy of the seed request with top-level fields replaced."""
    body: dict[str, Any] = json.loads(json.dumps(SEED))
    body.update(changes)
    return body


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Gateway processes a test starts (append them); each is killed and reaped afterwards."""
    from tests.gateway_processes import stop_process

    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        stop_process(proc)
