"""Migrations under the advisory lock, and the embedded PostgreSQL keeping its data."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from errands.config import Settings
from errands.core.db import migration_files, open_pool
from tests.fixtures.app import serve_app


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


async def backend_pids(database_url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in await cursor.fetchall()]


async def test_a_request_to_a_frozen_database_gets_a_503_within_the_deadline(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path,
        db_pool_max=1,
        db_statement_timeout_s=1.0,
    )
    async with serve_app(settings) as running:
        created = await running.client.post("/timer", json={"hours": 1, "url": "http://a.test/"})
        timer_url = f"/timer/{created.json()['id']}"
        assert (await running.client.get(timer_url)).status_code == 200
        frozen = await backend_pids(database_url)
        assert frozen, "the pool holds a connection"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = await running.client.get(timer_url)
            waited_s = time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"detail": "the database is unavailable; try again shortly"}
        assert answer.headers["retry-after"]
        # The deadline, plus at most the few seconds the driver gives a cancel that cannot land.
        assert waited_s < 1.0 + 8.0
        # The same process serves again: the stuck connection was dropped, not reused.
        assert (await running.client.get(timer_url)).status_code == 200


async def test_a_statement_that_runs_past_the_deadline_is_stopped_by_the_server(
    database_url: str,
) -> None:
    async with open_pool(database_url, max_size=1, deadline_s=0.5) as pool:
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(30)")
        async with pool.connection() as conn:
            cursor = await conn.execute("SHOW statement_timeout")
            assert await cursor.fetchone() == {"statement_timeout": "500ms"}
