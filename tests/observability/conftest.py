"""The API fixtures (sandbox on a real socket, gateway factory) for the observability tests."""

from tests.api.conftest import gateway, make_settings, sandbox

__all__ = ["gateway", "make_settings", "sandbox"]
