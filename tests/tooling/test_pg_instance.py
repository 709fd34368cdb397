"""The private PostgreSQL server of the outage tests (tests/pg_instance.py) does what they
rely on: it runs as the postgres user with fsync on, a committed row survives SIGKILL of every
server process and ``stop -m immediate``, and nothing of it is left afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from tests.gateway_processes import process_alive
from tests.pg_instance import PrivatePostgres

pytestmark = pytest.mark.postgres


async def count_rows(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows: int = await conn.fetchval("SELECT count(*) FROM t")
    finally:
        await conn.close()
    return rows


@pytest.mark.timeout(60)
async def test_committed_rows_survive_sigkill_and_an_immediate_stop(
    private_postgres: PrivatePostgres,
) -> None:
    server = private_postgres
    conn = await asyncpg.connect(server.url, timeout=5)
    try:
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SELECT current_user") == "postgres"
        await conn.execute("CREATE TABLE t (x int)")
        await conn.execute("INSERT INTO t VALUES (1)")
    finally:
        await conn.close()
    postmaster = server.postmaster_pid()
    assert postmaster is not None
    if os.geteuid() == 0:  # PostgreSQL refuses root: the server runs as the postgres user
        assert os.stat(f"/proc/{postmaster}").st_uid != 0

    server.kill()
    assert not process_alive(postmaster)
    with pytest.raises(ConnectionRefusedError):
        await count_rows(server.url)
    server.start()
    assert await count_rows(server.url) == 1

    server.stop("immediate")
    server.start()
    assert await count_rows(server.url) == 1


def test_remove_stops_the_server_and_deletes_its_directory(postgres_bindir: Path) -> None:
    server = PrivatePostgres(postgres_bindir)
    server.init()
    server.start()
    postmaster = server.postmaster_pid()
    assert postmaster is not None
    server.remove()
    assert not server.root.exists()
    assert not process_alive(postmaster)
