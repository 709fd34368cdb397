"""Structured JSON logging: one object per line, a fixed allow-list of context fields.

Only fields named in :data:`FIELDS` ever leave a record, so personal data passed by mistake in
``extra`` is dropped rather than written. :data:`PERSONAL_FIELDS` names the keys that are
dropped on purpose; a test checks every ``extra=`` key used in ``gateway/`` is in one or the
other.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["FIELDS", "PERSONAL_FIELDS", "JsonFormatter", "configure_logging"]

#: context fields written when a record carries them (none holds personal data or secrets)
FIELDS = (
    "request_id",
    "merchant",
    "method",
    "route",
    "status",
    "duration_ms",
    "provider",
    "decision_id",
    "attempts",
    "outcome",
    "event",
    "rules_version",
    "previous",
    "errors",
    "session_id",
    "event_id",
    "from_status",
    "to_status",
    "source",
    "reason",
    "replayed",
    #: the class name of an exception an adapter raised (never its message)
    "exception_type",
    "cause",
)

#: keys never written even when passed in ``extra``: the customer's data and credentials
PERSONAL_FIELDS = frozenset(
    {
        "email",
        "phone",
        "firstName",
        "lastName",
        "customer",
        "billingAddress",
        "shippingAddress",
        "authorization",
        "token",
    }
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            error = record.exc_info[1]
            if isinstance(error, HttpProcessingError):
                # aiohttp's parser errors quote the request's bytes (a token's first bytes)
                out["exc"] = type(error).__name__
            else:
                out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
