"""What the PostgreSQL store modules share: the connection settings, the one error mapping
and a printable form of the database URL (which may carry a password)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg

from gateway.store.base import StoreUnavailable

if TYPE_CHECKING:
    from gateway.settings import Settings

__all__ = [
    "PostgresSettings",
    "describe_database",
    "from_db_text",
    "is_unavailable",
    "mapped",
    "to_db_text",
]

#: marks a stored text that :func:`to_db_text` had to escape
_ESCAPED = "\x01"

#: SQLSTATE classes that say the database cannot serve right now, not that the query is
#: wrong: connection exception, invalid authorization (a password or role changed), transaction
#: rollback (deadlock, serialization), invalid catalog name (the database is gone), insufficient
#: resources, operator intervention (shutdown, cancelled by statement_timeout), system error.
#: Classes 28 and 3D only ever come from opening a connection, never from a query.
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})
#: single states: read-only transaction (a standby after failover), lock_timeout
_UNAVAILABLE_STATES = frozenset({"25006", "55P03"})


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """How the store connects: pool sizes and timeouts (seconds)."""

    url: str
    min_size: int = 2
    max_size: int = 20
    connect_timeout_s: float = 2.0
    command_timeout_s: float = 5.0
    pool_timeout_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresSettings:
        """The store settings of a gateway configuration."""
        return cls(
            url=settings.database_url.get_secret_value(),
            min_size=settings.database_pool_min_size,
            max_size=settings.database_pool_max_size,
            connect_timeout_s=settings.database_connect_timeout_seconds,
            command_timeout_s=settings.database_command_timeout_seconds,
            pool_timeout_s=settings.database_pool_timeout_seconds,
        )


def describe_database(url: str) -> str:
    """``host:port/database`` of a PostgreSQL URL: what logs and messages may show (never
    the user's password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "(unparsable database URL)"
    database = parts.path.lstrip("/") or "(default database)"
    return f"{host}:{port}/{database}"


def to_db_text(value: str) -> str:
    """``value`` as PostgreSQL ``text`` can hold it. PostgreSQL refuses NUL characters (and
    lone surrogates, which are not UTF-8), while a merchant's orderReference or a provider's
    event id may carry them (JSON escapes them). Such a value, or one that starts with the
    escape mark, is stored as the mark plus its ASCII JSON string; every other value is stored
    as it is, so the mapping is one-to-one and ordinary values stay readable."""
    return value if _storable(value) else _ESCAPED + json.dumps(value)


def _storable(value: str) -> bool:
    if "\x00" in value or value.startswith(_ESCAPED):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def from_db_text(stored: str) -> str:
    """The value :func:`to_db_text` stored as ``stored``."""
    if stored.startswith(_ESCAPED):
        decoded: str = json.loads(stored[len(_ESCAPED) :])
        return decoded
    return stored


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable or busy (not a bug in a query)."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES
    # asyncpg's protocol left mid-operation by a connection the server dropped ("cannot
    # switch to state ..."), on the next query or on the pool's reset at release; the pool
    # terminates that connection
    if isinstance(exc, asyncpg.InternalClientError):
        return True
    # the pool hands out a connection that the server closed meanwhile
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


@contextmanager
def mapped(operation: str) -> Iterator[None]:
    """Map an outage of the database during ``operation`` to :class:`StoreUnavailable`, once;
    any other error (a wrong query, a constraint) stays what it is: a bug to see."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(
                f"postgres {operation} failed: {type(exc).__name__}: {exc}"
            ) from exc
        raise
