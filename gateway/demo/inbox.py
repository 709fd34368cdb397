"""What the demo merchant received: the last notifications, each with its verification."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.notifications.signing import verify_signature

__all__ = ["Inbox", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    """One notification as the demo merchant saw it."""

    at: datetime
    verified: bool
    event_type: str
    session_id: str
    status: str
    version: int | None


def _payload(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    data = parsed.get("data")
    session = data.get("payment_session") if isinstance(data, dict) else None
    return {"type": parsed.get("type"), **(session if isinstance(session, dict) else {})}


class Inbox:
    """The last ``size`` notifications (memory of this process only), newest first."""

    def __init__(self, secret: str, size: int = 50) -> None:
        self._secret = secret
        self._items: deque[Received] = deque(maxlen=size)

    def receive(self, signature: str, body: bytes) -> Received:
        """Verify ``body`` against its ``Gateway-Signature`` (the README's recipe) and keep it."""
        payload = _payload(body)
        version = payload.get("version")
        item = Received(
            at=datetime.now(UTC),
            verified=verify_signature(self._secret, signature, body),
            event_type=str(payload.get("type") or "?"),
            session_id=str(payload.get("sessionId") or "?"),
            status=str(payload.get("status") or "?"),
            version=version if isinstance(version, int) else None,
        )
        self._items.appendleft(item)
        return item

    def latest(self, session_id: str | None = None) -> list[Received]:
        """Newest first; only ``session_id``'s when given."""
        return [i for i in self._items if session_id is None or i.session_id == session_id]
