"""The API fixtures (a real sandbox, a gateway on a real socket) for the routing API tests."""

from tests.api.conftest import gateway, make_settings, sandbox

__all__ = ["gateway", "make_settings", "sandbox"]
