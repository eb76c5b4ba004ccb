"""Migrations under the advisory lock, and the embedded PostgreSQL keeping its data."""

import asyncio
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from errands.core.db import migration_files


@pytest.fixture
async def empty_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(postgres_server_url, autocommit=True) as conn:
        await conn.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(postgres_server_url, dbname=name)
    async with await psycopg.AsyncConnection.connect(postgres_server_url, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def test_five_processes_migrating_at_once_apply_each_migration_once(
    empty_database_url: str,
) -> None:
    migrate = [sys.executable, "-m", "errands", "migrate"]
    env = {"ERRANDS_DATABASE_URL": empty_database_url, "PATH": "/usr/bin:/bin"}
    processes = [
        await asyncio.create_subprocess_exec(
            *migrate, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(5)
    ]
    outputs = [await process.communicate() for process in processes]

    assert [process.returncode for process in processes] == [0] * 5, outputs
    async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
        cursor = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        versions = [row[0] for row in await cursor.fetchall()]
    assert versions == [version for version, _, _ in migration_files()]
    reports = b"".join(stdout for stdout, _ in outputs).decode()
    for _, name, _ in migration_files():
        assert reports.count(f"applied {name}") == 1, "exactly one process applied each"


def test_migration_files_are_numbered_without_duplicates() -> None:
    versions = [version for version, _, _ in migration_files()]
    assert len(versions) == len(set(versions))
    assert versions == sorted(versions)


EMBEDDED_ROUND = textwrap.dedent(
    """
    import sys
    import psycopg
    from pathlib import Path
    from errands.core.db import start_embedded_postgres

    url = start_embedded_postgres(Path(sys.argv[1]) / "postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS visits (n int)")
        conn.execute("INSERT INTO visits VALUES (1)")
        print(conn.execute("SELECT count(*) FROM visits").fetchone()[0])
    """
)


def test_the_embedded_database_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    def one_run() -> int:
        done = subprocess.run(
            [sys.executable, "-c", EMBEDDED_ROUND, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return int(done.stdout.strip())

    assert one_run() == 1
    assert one_run() == 2, "the second start found the first start's row"
