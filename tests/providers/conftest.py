"""Fixtures shared by the adapter tests: one pooled client and the strict sandbox with a sink."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from providers.http import new_client_session
from tests.contracts.strict_sandbox import ServerFactory, StrictSandbox
from tests.providers.hosted_inputs import WebhookSink, start_sandbox_with_sink


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The adapters' pooled client session, closed after the test."""
    client = new_client_session()
    yield client
    await client.close()


@pytest.fixture
async def env(aiohttp_server: ServerFactory) -> tuple[StrictSandbox, WebhookSink]:
    """The strict-contract sandbox and the sink receiving its webhooks."""
    return await start_sandbox_with_sink(aiohttp_server)


@pytest.fixture
def sandbox(env: tuple[StrictSandbox, WebhookSink]) -> StrictSandbox:
    return env[0]


def last_sent(sandbox: StrictSandbox) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and JSON body of the last request the sandbox received."""
    recorded = sandbox.requests[-1]
    return recorded.headers, json.loads(recorded.body)
