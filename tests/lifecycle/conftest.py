"""The whole lifecycle on real sockets: gateway, sandbox providers, and a merchant's receiver.

``lifecycle_env(...)`` starts, in this order: the merchant receiver (records notifications,
serves the success/failure pages), the sandbox (its webhooks go to the gateway, or to a
recording sink with ``sink=True``), then the gateway on a port chosen up front, with a
merchants file pointing at the receiver and routing pinned to one provider.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port
from aiohttp.web_urldispatcher import PrefixedSubAppResource

from gateway.app import create_app
from gateway.appkeys import LIFECYCLE, ROUTER, STORE
from gateway.domain.session import SessionRecord
from gateway.notifications import verify_signature
from gateway.settings import Settings
from gateway.store.base import RecordStore
from providers.sandbox.app import create_sandbox_root
from providers.sandbox.state import SANDBOX_STATE, SandboxConfig, SandboxState
from tests.api.conftest import JWT_SECRET, ROOT, headers, seed
from tests.providers.hosted_inputs import WebhookSink, start_sink

MERCHANT_SECRET = "whsec_merchant_test_0123456789abcdef"


@dataclass
class Receiver:
    """The merchant's side: a notification endpoint and the redirect pages."""

    server: TestServer
    events: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_first: int = 0
    calls: int = 0

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def verified(self) -> list[dict[str, Any]]:
        """Every notification received with a valid signature, parsed (asserts on a bad one)."""
        out = []
        for hdrs, body in self.events:
            assert verify_signature(MERCHANT_SECRET, hdrs["Gateway-Signature"], body), hdrs
            out.append(json.loads(body))
        return out

    def of_session(self, session_id: str) -> list[dict[str, Any]]:
        return [
            e for e in self.verified() if e["data"]["payment_session"]["sessionId"] == session_id
        ]


async def start_receiver(aiohttp_server: Any, fail_first: int = 0) -> Receiver:
    app = web.Application()
    receiver: Receiver | None = None

    async def hook(request: web.Request) -> web.Response:
        assert receiver is not None
        body = await request.read()
        receiver.calls += 1
        if receiver.calls <= receiver.fail_first:
            return web.Response(status=503, text="try later")
        receiver.events.append((dict(request.headers), body))
        return web.Response(text="ok")

    async def page(request: web.Request) -> web.Response:
        outcome = request.match_info["outcome"]
        return web.Response(
            text=f"<html><body><h1 id='outcome'>{outcome}</h1></body></html>",
            content_type="text/html",
        )

    app.router.add_post("/hooks", hook)
    app.router.add_get("/checkout/{outcome}", page)
    receiver = Receiver(await aiohttp_server(app), fail_first=fail_first)
    return receiver


def pinned_rules(tmp_path: Path, provider: str) -> Path:
    """The default rules with every card payment pinned to ``provider``."""
    rules = yaml.safe_load((ROOT / "routing_rules.yaml").read_text())
    rules["scoring"]["exploration"] = 0
    rules["rules"].insert(
        0,
        {
            "id": f"test-pin-{provider}",
            "priority": 5000,
            "when": {"payment_method": "card"},
            "then": {"pin": provider},
        },
    )
    path = tmp_path / f"rules-{provider}.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def merchants_file(tmp_path: Path, receiver_url: str, merchant: str = "merchant-1") -> Path:
    path = tmp_path / "merchants.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "merchants": {
                    merchant: {
                        "webhook": {"url": f"{receiver_url}/hooks", "secret": MERCHANT_SECRET}
                    }
                }
            }
        )
    )
    return path


@dataclass
class Env:
    client: TestClient[Any, Any]
    sandbox: TestServer
    receiver: Receiver
    sink: WebhookSink | None
    base_url: str

    @property
    def store(self) -> RecordStore:
        return self.client.app[STORE]

    async def rewrite(
        self, record: SessionRecord, *, expires_at: float | None = None, **changes: Any
    ) -> SessionRecord:
        """Change the stored ``record`` the way the lifecycle does (compare-and-set on its
        version), and re-index its expiry at ``expires_at`` when given."""
        moved = record.model_copy(update={**changes, "version": record.version + 1})
        assert await self.store.update_session(moved, expected_version=record.version)
        if expires_at is not None:
            await self.store.schedule_expiry(record.sessionId, expires_at)
        return moved

    @property
    def lifecycle(self) -> Any:
        return self.client.app[LIFECYCLE]

    @property
    def router(self) -> Any:
        return self.client.app[ROUTER]

    @property
    def sandbox_state(self) -> SandboxState:
        """The running sandbox's state (sessions, PayPal's captures and test knobs)."""
        for resource in self.sandbox.app.router.resources():
            if isinstance(resource, PrefixedSubAppResource):
                return resource._app[SANDBOX_STATE]
        raise AssertionError("no sandbox sub-app")

    async def create(self, key: str = "k1", **changes: Any) -> dict[str, Any]:
        body = seed(
            redirectUrls={
                "success": f"{self.receiver.url}/checkout/success",
                "failure": f"{self.receiver.url}/checkout/failure",
            },
            **changes,
        )
        response = await self.client.post("/api/v1/sessions", json=body, headers=headers(key))
        assert response.status == 201, await response.text()
        created: dict[str, Any] = await response.json()
        return created

    async def read(self, session_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))
        assert response.status == 200, await response.text()
        view: dict[str, Any] = await response.json()
        return view


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
def lifecycle_env(
    store_factory: Any,
    coordination_factory: Any,
    aiohttp_server: Any,
    aiohttp_client: Any,
    tmp_path: Path,
) -> EnvFactory:
    """``await lifecycle_env(provider, store=..., **setting_overrides)``; stores made with the
    factories are closed after the gateway stopped (set up first, torn down last)."""

    async def factory(
        provider: str = "stripe",
        *,
        store: RecordStore | None = None,
        sink: bool = False,
        fail_first: int = 0,
        **overrides: Any,
    ) -> Env:
        receiver = await start_receiver(aiohttp_server, fail_first)
        port = unused_port()
        base_url = f"http://127.0.0.1:{port}"
        webhook_sink = await start_sink(aiohttp_server) if sink else None
        sandbox: TestServer = await aiohttp_server(
            create_sandbox_root(
                SandboxConfig(
                    gateway_base_url=webhook_sink.base_url if webhook_sink else base_url,
                    expiry_sweep_seconds=0,
                    random_seed=7,
                )
            )
        )
        api = str(sandbox.make_url("/sandbox")).rstrip("/")
        values: dict[str, Any] = {
            "env": "sandbox",
            "jwt_secret": JWT_SECRET,
            "port": port,
            "public_url": base_url,
            "rules_path": pinned_rules(tmp_path, provider),
            "merchants_path": merchants_file(tmp_path, receiver.url),
            "sandbox_embedded": False,
            "provider_stripe_base_url": f"{api}/stripe",
            "provider_adyen_base_url": f"{api}/adyen",
            "provider_paypal_base_url": f"{api}/paypal",
            "provider_timeout_seconds": 2.0,
            "request_deadline_seconds": 5.0,
            "idempotency_lease_seconds": 10,
            "expiry_sweep_interval_seconds": 0.1,
            "notification_poll_interval_seconds": 0.05,
            "notification_backoff_base_seconds": 0.05,
            "notification_backoff_max_seconds": 0.2,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        client: TestClient[Any, Any] = await aiohttp_client(
            create_app(settings, store=store), server_kwargs={"port": port}
        )
        return Env(client, sandbox, receiver, webhook_sink, base_url)

    return factory
