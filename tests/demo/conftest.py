"""The gateway as ``make run`` starts it (sandbox providers embedded, the demo routed), on a
real port, with routing pinned to one provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, unused_port

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import JWT_SECRET
from tests.lifecycle.conftest import pinned_rules


@dataclass
class Demo:
    client: TestClient[Any, Any]
    base_url: str
    settings: Settings


DemoFactory = Callable[..., Awaitable[Demo]]


@pytest.fixture
def demo_gateway(aiohttp_client: Any, tmp_path: Path) -> DemoFactory:
    async def factory(provider: str = "stripe", **overrides: Any) -> Demo:
        merchants = tmp_path / "merchants.yaml"  # none configured: the demo merchant is added
        merchants.write_text("merchants: {}\n")
        port = unused_port()
        base_url = f"http://127.0.0.1:{port}"
        values: dict[str, Any] = {
            "env": "sandbox",
            "jwt_secret": JWT_SECRET,
            "port": port,
            "public_url": base_url,
            "rules_path": pinned_rules(tmp_path, provider),
            "merchants_path": merchants,
            "provider_timeout_seconds": 2.0,
            "request_deadline_seconds": 5.0,
            "return_wait_seconds": 5.0,
            "expiry_sweep_interval_seconds": 0.1,
            "notification_poll_interval_seconds": 0.05,
            "notification_backoff_base_seconds": 0.05,
            "notification_backoff_max_seconds": 0.2,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        client: TestClient[Any, Any] = await aiohttp_client(
            create_app(settings), server_kwargs={"port": port}
        )
        return Demo(client, base_url, settings)

    return factory
