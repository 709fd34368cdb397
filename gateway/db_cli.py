"""``gateway db upgrade | status`` and the schema check ``gateway serve`` runs first when the
records live in PostgreSQL (``GATEWAY_STORE=postgres``).

Exit statuses: 0 done / current; 1 (status) an upgrade is pending; 2 the settings are
invalid, the database cannot be reached, its schema was upgraded by a newer gateway (versions
this one does not know: it neither serves on it nor applies its files to it), or (serve) its
schema is older than this gateway needs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.settings import Settings

__all__ = ["add_db_commands", "schema_gate"]


async def _connect(settings: Settings) -> Any:
    import asyncpg

    return await asyncpg.connect(
        settings.database_url.get_secret_value(),
        timeout=settings.database_connect_timeout_seconds,
    )


def _where(settings: Settings) -> str:
    from gateway.store.postgres_support import describe_database

    return describe_database(settings.database_url.get_secret_value())


def _unreachable(settings: Settings, exc: BaseException) -> int:
    from gateway.store.postgres_support import is_unavailable

    if not is_unavailable(exc) and not _is_postgres_error(exc):
        raise exc
    print(
        f"gateway: PostgreSQL at {_where(settings)} cannot be used: {type(exc).__name__}: {exc}",
        file=sys.stderr,
    )
    return 2


def _is_postgres_error(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError)


def _settings() -> Settings | None:
    """The settings, or None after printing why they are invalid (without their values)."""
    try:
        return Settings()
    except ValueError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return None


def _too_new(settings: Settings, exc: BaseException) -> int:
    print(f"gateway: PostgreSQL at {_where(settings)}: {exc}", file=sys.stderr)
    return 2


async def _upgrade(settings: Settings) -> tuple[int, tuple[str, ...]]:
    from gateway.store.postgres_schema import schema_state, upgrade

    conn = await _connect(settings)
    try:
        applied = await upgrade(conn)
        state = await schema_state(conn)
    finally:
        await conn.close()
    return state.current, tuple(f"{m.version:04d}_{m.name}" for m in applied)


async def _status(settings: Settings) -> tuple[int, int, tuple[str, ...]]:
    from gateway.store.postgres_schema import SchemaTooNew, schema_state

    conn = await _connect(settings)
    try:
        state = await schema_state(conn)
    finally:
        await conn.close()
    if state.unknown:
        raise SchemaTooNew(state)
    pending = tuple(f"{m.version:04d}_{m.name}" for m in state.pending)
    return state.current, state.latest, pending


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply the pending migrations (idempotent; safe on every deploy and concurrently)."""
    from gateway.store.postgres_schema import SchemaTooNew

    settings = _settings()
    if settings is None:
        return 2
    try:
        version, applied = asyncio.run(_upgrade(settings))
    except SchemaTooNew as exc:
        return _too_new(settings, exc)
    except Exception as exc:
        return _unreachable(settings, exc)
    done = ", ".join(applied) if applied else "nothing to apply"
    print(f"database {_where(settings)}: schema version {version} ({done})")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    """Print the schema version; exit 1 when migrations are pending."""
    from gateway.store.postgres_schema import SchemaTooNew

    settings = _settings()
    if settings is None:
        return 2
    try:
        current, latest, pending = asyncio.run(_status(settings))
    except SchemaTooNew as exc:
        return _too_new(settings, exc)
    except Exception as exc:
        return _unreachable(settings, exc)
    print(f"database {_where(settings)}: schema version {current}, this gateway ships {latest}")
    if pending:
        print(f"pending: {', '.join(pending)} (run `gateway db upgrade`)")
        return 1
    print("up to date")
    return 0


def schema_gate(settings: Settings) -> int | None:
    """Before serving with ``GATEWAY_STORE=postgres``: None when the schema is current (in
    sandbox mode after upgrading it), else the exit status, with the reason on stderr."""
    from gateway.store.postgres_schema import SchemaTooNew

    if settings.store != "postgres":
        return None
    try:
        if settings.is_sandbox:
            asyncio.run(_upgrade(settings))
            return None
        current, latest, pending = asyncio.run(_status(settings))
    except SchemaTooNew as exc:
        return _too_new(settings, exc)
    except Exception as exc:
        return _unreachable(settings, exc)
    if pending:
        print(
            f"gateway: the database schema at {_where(settings)} is at version {current}, "
            f"this gateway needs {latest} (pending: {', '.join(pending)}): "
            "run `gateway db upgrade`",
            file=sys.stderr,
        )
        return 2
    return None


def add_db_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``gateway db upgrade`` and ``gateway db status``."""
    summary = "the PostgreSQL schema of the records (GATEWAY_DATABASE_URL)"
    db = sub.add_parser("db", help=summary, description=summary[0].upper() + summary[1:] + ".")
    commands = db.add_subparsers(dest="db_command", required=True)
    for name, summary, func in (
        (
            "upgrade",
            "apply the pending migrations (idempotent, safe to run on every deploy and from "
            "several machines at once)",
            cmd_db_upgrade,
        ),
        (
            "status",
            "print the schema version; exit status 1 when an upgrade is pending, 2 when the "
            "database cannot be reached or a newer gateway upgraded it",
            cmd_db_status,
        ),
    ):
        command = commands.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + "."
        )
        command.set_defaults(func=func)
