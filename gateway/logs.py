"""Structured JSON logging: one object per line, a fixed allow-list of context fields.

Only fields named in ``_FIELDS`` ever leave a record, so personal data passed by mistake in
``extra`` is dropped rather than written.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging"]

_FIELDS = (
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
    "errors",
    "session_id",
    "replayed",
    #: the class name of an exception an adapter raised (never its message)
    "exception_type",
    "cause",
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
        for name in _FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
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
