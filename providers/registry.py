"""Which adapter class serves which provider name: explicit, one line per provider."""

from __future__ import annotations

import importlib

import aiohttp

from gateway.settings import ProviderConfig
from providers.base import ProviderAdapter

__all__ = ["KNOWN_PROVIDERS", "build_adapter"]

KNOWN_PROVIDERS: dict[str, str] = {
    "stripe": "providers.stripe.adapter:StripeAdapter",
    "adyen": "providers.adyen.adapter:AdyenAdapter",
    "paypal": "providers.paypal.adapter:PayPalAdapter",
}


def build_adapter(config: ProviderConfig, http: aiohttp.ClientSession) -> ProviderAdapter:
    """Instantiate the adapter for ``config.name`` on the shared client session."""
    try:
        target = KNOWN_PROVIDERS[config.name]
    except KeyError:
        raise ValueError(f"unknown provider {config.name!r}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    adapter: ProviderAdapter = cls(config, http)
    return adapter
