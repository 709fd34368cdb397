"""The adyen adapter: hosted checkout, webhooks and the calls after the checkout."""

from providers.adyen.adapter import AdyenAdapter

__all__ = ["AdyenAdapter"]
