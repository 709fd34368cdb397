"""The sandbox on a real test server, behind a middleware that enforces the official contract.

Every call to an operation of the provider's spec files (``POST /sandbox/{provider}<path>``:
the hosted-checkout create and the calls after the checkout) is validated with
:func:`validate_request` before the emulator sees it; a violation answers 400 with the problems
(in an ``{"error": {...}}`` body the adapters' error mapping understands) and is recorded, so an
adapter test proves conformance simply by succeeding. Usage::

    @pytest.fixture
    async def sandbox(aiohttp_server):
        return await start_strict_sandbox(aiohttp_server)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from gateway.settings import SANDBOX_SECRETS, ProviderConfig
from providers.sandbox.app import create_sandbox_app
from providers.sandbox.state import SANDBOX_STATE, SandboxConfig, SandboxState
from tests.contracts.spec_validator import (
    SPEC_FILES,
    find_operation,
    operations,
    validate_request,
)

__all__ = ["RecordedRequest", "StrictSandbox", "start_strict_sandbox"]

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass(frozen=True)
class RecordedRequest:
    """One provider call the strict middleware saw."""

    provider: str
    headers: dict[str, str]
    body: bytes
    problems: list[str]
    #: the spec operation called (``"<file stem>:<name>"``)
    operation: str = ""


@dataclass
class StrictSandbox:
    """A running sandbox with contract enforcement; see the module docstring."""

    state: SandboxState
    server: TestServer | None = None
    requests: list[RecordedRequest] = field(default_factory=list)

    @property
    def root(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self.server is not None, "not started"
        return str(self.server.make_url("")).rstrip("/")

    def url(self, path: str) -> str:
        """An absolute URL on the test server."""
        return f"{self.root}{path}"

    def base_url(self, provider: str) -> str:
        """The emulated provider's API base URL (``ProviderConfig.base_url``)."""
        return f"{self.root}/sandbox/{provider}"

    def provider_config(self, provider: str, **overrides: Any) -> ProviderConfig:
        """A provider config pointing at this sandbox with the sandbox credentials."""
        secrets = SANDBOX_SECRETS[provider]
        values: dict[str, Any] = {
            "name": provider,
            "base_url": self.base_url(provider),
            "api_key": secrets.get("api_key"),
            "merchant_account": secrets.get("merchant_account"),
            "client_id": secrets.get("client_id"),
            "client_secret": secrets.get("client_secret"),
            "webhook_secret": secrets.get("webhook_secret"),
            "hmac_key": secrets.get("hmac_key"),
            "webhook_id": secrets.get("webhook_id"),
            "sandbox": True,
        }
        values.update(overrides)
        return ProviderConfig(**values)

    @property
    def violations(self) -> list[RecordedRequest]:
        """The calls that broke the contract."""
        return [r for r in self.requests if r.problems]


def _parsed(provider: str, body: bytes) -> Any:
    """The JSON body (for choosing between operations that share a path), or None."""
    if provider == "stripe" or not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def strict_contract_middleware(sandbox: StrictSandbox) -> Any:
    """Validate every POST to an operation of a provider's spec files (the hosted-checkout
    create and every call after the checkout); 400 with the problems if it breaks them."""

    @web.middleware
    async def strict(request: web.Request, handler: Handler) -> web.StreamResponse:
        provider, _, rest = request.path.removeprefix("/sandbox/").partition("/")
        if request.method != "POST" or provider not in SPEC_FILES:
            return await handler(request)
        body = await request.read()  # cached: the emulator reads it again
        operation = find_operation(provider, "POST", "/" + rest, _parsed(provider, body))
        if operation is None:
            return await handler(request)
        create = operation == operations(provider)[0]
        problems = validate_request(
            provider, request.headers, body, operation=None if create else operation
        )
        sandbox.requests.append(
            RecordedRequest(provider, dict(request.headers), body, problems, operation)
        )
        if not problems:
            return await handler(request)
        payload = {
            "error": {
                "type": "invalid_request_error",
                "code": "contract_violation",
                "message": "; ".join(problems),
            },
            "contractViolations": problems,
        }
        return web.Response(status=400, body=orjson.dumps(payload), content_type="application/json")

    return strict


async def start_strict_sandbox(
    aiohttp_server: ServerFactory, config: SandboxConfig | None = None
) -> StrictSandbox:
    """Start the sandbox (mounted at ``/sandbox``) on a real socket with contract enforcement."""
    sandbox_app = create_sandbox_app(config or SandboxConfig(expiry_sweep_seconds=0))
    sandbox = StrictSandbox(state=sandbox_app[SANDBOX_STATE])
    root = web.Application(middlewares=[strict_contract_middleware(sandbox)])
    root.add_subapp("/sandbox", sandbox_app)
    sandbox.server = await aiohttp_server(root)
    return sandbox
