"""The stripe adapter: hosted checkout, webhooks and the calls after the checkout."""

from providers.stripe.adapter import StripeAdapter

__all__ = ["StripeAdapter"]
