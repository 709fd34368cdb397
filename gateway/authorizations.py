"""When an AUTHORIZED session's merchant is warned that its authorization lapses.

The provider holds a manual-capture authorization for a while only (``Capabilities.
authorization_days``: Stripe 7, Adyen and PayPal their own). A move to AUTHORIZED records
``authorizationExpiresAt``; the session is indexed for the sweeper at :func:`warning_at`
(:data:`WARNING` before), and the sweeper then notifies the merchant once
(``payment_session.authorization_expiring``) and counts it
(``gateway_authorizations_expiring_total``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.domain.session import SessionRecord, SessionStatus

__all__ = ["WARNING", "expires_at", "warning_at"]

#: how long before the authorization lapses the merchant is warned
WARNING = timedelta(days=1)


def expires_at(now: datetime, days: int) -> datetime:
    """When an authorization made at ``now`` lapses at a provider that holds it ``days``."""
    return now + timedelta(days=days)


def warning_at(record: SessionRecord) -> datetime | None:
    """When the sweeper should warn about ``record``'s authorization; None when there is
    nothing to warn about (not AUTHORIZED, no known lapse, or warned already)."""
    if record.status is not SessionStatus.AUTHORIZED or record.authorizationExpiryNotified:
        return None
    if record.authorizationExpiresAt is None:
        return None
    return record.authorizationExpiresAt - WARNING
