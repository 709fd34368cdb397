"""The paypal adapter: hosted checkout, webhooks and the calls after the checkout."""

from providers.paypal.adapter import PayPalAdapter

__all__ = ["PayPalAdapter"]
