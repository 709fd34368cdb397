"""The PostgreSQL schema: numbered SQL files shipped in :mod:`gateway.store.migrations`,
applied in order by ``gateway db upgrade``.

Each file ``NNNN_name.sql`` is one version. :func:`upgrade` applies the pending ones in one
transaction under a transaction-level advisory lock, recording each in ``schema_migrations``,
so two deploys upgrading at once apply every file exactly once (the second waits, then finds
nothing to do) and a failed file leaves the schema as it was. :func:`schema_state` tells
``gateway serve`` whether the schema is current.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = [
    "LOCK_KEY",
    "Migration",
    "SchemaState",
    "SchemaTooNew",
    "migrations",
    "schema_state",
    "upgrade",
]

#: The advisory lock every upgrade holds (any constant bigint unique to this application).
LOCK_KEY = 0x6761_7465_7761_79  # "gateway"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One shipped schema version."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What a database holds compared with what this gateway ships."""

    applied: tuple[int, ...]
    shipped: tuple[Migration, ...]

    @property
    def current(self) -> int:
        """The highest applied version (0 for an empty database)."""
        return max(self.applied, default=0)

    @property
    def latest(self) -> int:
        """The highest version this gateway ships."""
        return max((m.version for m in self.shipped), default=0)

    @property
    def unknown(self) -> tuple[int, ...]:
        """Applied versions this gateway does not ship: the schema belongs to a newer one."""
        shipped = {m.version for m in self.shipped}
        return tuple(v for v in self.applied if v not in shipped)

    @property
    def pending(self) -> tuple[Migration, ...]:
        """Shipped versions the database does not have yet."""
        done = set(self.applied)
        return tuple(m for m in self.shipped if m.version not in done)


class SchemaTooNew(RuntimeError):
    """The database holds schema versions this gateway does not know (a newer gateway
    upgraded it): this one must neither serve on it nor apply its older files to it."""

    def __init__(self, state: SchemaState) -> None:
        self.state = state
        unknown = ", ".join(str(v) for v in state.unknown)
        super().__init__(
            f"the schema has version(s) {unknown} that this gateway does not know (it ships "
            f"up to {state.latest}): it was upgraded by a newer gateway; run that version"
        )


def migrations() -> tuple[Migration, ...]:
    """The migrations shipped in the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("gateway.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is not None:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return tuple(found)


async def _applied(conn: Any) -> tuple[int, ...]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return ()
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return tuple(int(r["version"]) for r in rows)


async def schema_state(conn: Any) -> SchemaState:
    """The applied and shipped versions (``conn``: an asyncpg connection)."""
    return SchemaState(await _applied(conn), migrations())


async def upgrade(conn: Any) -> tuple[Migration, ...]:
    """Apply every pending migration in one transaction; the ones applied (none when the
    schema was current). Safe to run concurrently and on every deploy.
    :class:`SchemaTooNew` (nothing applied) when a newer gateway upgraded the schema."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(_VERSION_TABLE)
        state = await schema_state(conn)
        if state.unknown:
            raise SchemaTooNew(state)
        for migration in state.pending:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        return state.pending
