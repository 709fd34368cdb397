"""Fixtures of the contract suite: the sandbox behind the strict contract middleware."""

from __future__ import annotations

import pytest

from tests.contracts.strict_sandbox import ServerFactory, StrictSandbox, start_strict_sandbox


@pytest.fixture
async def strict_sandbox(aiohttp_server: ServerFactory) -> StrictSandbox:
    """The sandbox on a real test server, enforcing the providers' official request contracts."""
    return await start_strict_sandbox(aiohttp_server)
