"""The SQL of monitors: the monitors table, the day-partitioned checks and their hourly rollups."""

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from errands.core import claims
from errands.core.db import Pool
from errands.monitors.results import (
    HISTOGRAM_SIZE,
    LATENCY_BOUNDS_MS,
    CheckResult,
    InvalidCheckMessage,
    decode_check,
    histogram_of,
    percentile_from_histogram,
)

__all__ = [
    "CHANNEL",
    "MonitorFields",
    "StoredBatch",
    "Uptime",
    "create_monitor",
    "delete_monitor",
    "drop_expired",
    "ensure_partitions",
    "get_monitor",
    "list_monitors",
    "recent_checks",
    "reschedule_checked",
    "save_checks",
    "sync_monitor",
    "update_monitor",
    "uptime_from_raw",
    "uptime_from_rollups",
]

CHANNEL = "errands_monitors"

Row = dict[str, Any]
Connection = psycopg.AsyncConnection[Row]


@dataclass(frozen=True)
class MonitorFields:
    url: str
    interval_s: int
    timeout_s: float
    method: str
    regex: str | None


# A new or changed monitor is checked at once; its later slots follow from that first one.
INSERT_MONITOR = """
    INSERT INTO monitors (id, url, method, interval_s, timeout_s, regex, due_at)
    VALUES (%(id)s, %(url)s, %(method)s, %(interval_s)s, %(timeout_s)s, %(regex)s, now())
    ON CONFLICT (url) DO NOTHING
    RETURNING id, url, method, interval_s, timeout_s, regex, created_at, updated_at, due_at
"""

SELECT_MONITORS = """
    SELECT id, url, method, interval_s, timeout_s, regex, created_at, updated_at, due_at
      FROM monitors
     ORDER BY created_at, id
     LIMIT %(limit)s
    OFFSET %(offset)s
"""

SELECT_MONITOR = """
    SELECT id, url, method, interval_s, timeout_s, regex, created_at, updated_at, due_at
      FROM monitors
     WHERE id = %(id)s
"""

SELECT_MONITOR_BY_URL = """
    SELECT id, url, method, interval_s, timeout_s, regex, created_at, updated_at, due_at
      FROM monitors
     WHERE url = %(url)s
       FOR UPDATE
"""

# Clearing the lease makes a checker that is mid-check on the old settings write nothing back.
UPDATE_MONITOR = """
    UPDATE monitors
       SET url = %(url)s,
           method = %(method)s,
           interval_s = %(interval_s)s,
           timeout_s = %(timeout_s)s,
           regex = %(regex)s,
           updated_at = now(),
           due_at = now(),
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
 RETURNING id, url, method, interval_s, timeout_s, regex, created_at, updated_at, due_at
"""

DELETE_MONITOR = """
    DELETE FROM monitors
     WHERE id = %(id)s
"""

DELETE_MONITORS_NOT_LISTED = """
    DELETE FROM monitors
     WHERE url <> ALL(%(urls)s)
 RETURNING url
"""

# The next slot is the first of due_at + k * interval (k >= 1) that is not in the past, so a
# checker that fell behind skips the slots it missed instead of checking in a burst. The guard on
# lease_owner and due_at means only the checker that claimed a slot moves it on.
RESCHEDULE_CHECKED = """
    UPDATE monitors
       SET due_at = monitors.due_at + make_interval(
               secs => monitors.interval_s * greatest(
                   1, ceil(extract(epoch FROM now() - monitors.due_at) / monitors.interval_s)
               )
           ),
           lease_owner = NULL,
           lease_until = NULL
      FROM unnest(%(ids)s::uuid[], %(due_ats)s::timestamptz[]) AS checked(id, due_at)
     WHERE monitors.id = checked.id
       AND monitors.due_at = checked.due_at
       AND monitors.lease_owner = %(owner)s
 RETURNING monitors.id
"""


async def create_monitor(pool: Pool, fields: MonitorFields) -> Row | None:
    """Insert a monitor and wake the checkers; None when its URL is already monitored."""
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(INSERT_MONITOR, {"id": uuid.uuid4(), **vars(fields)})
        row = await cursor.fetchone()
        if row is not None:
            await claims.notify(conn, CHANNEL)
    return row


async def list_monitors(pool: Pool, limit: int, offset: int) -> list[Row]:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_MONITORS, {"limit": limit, "offset": offset})
        return await cursor.fetchall()


async def get_monitor(pool: Pool, monitor_id: uuid.UUID) -> Row | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_MONITOR, {"id": monitor_id})
        return await cursor.fetchone()


async def update_monitor(pool: Pool, monitor_id: uuid.UUID, fields: MonitorFields) -> Row | None:
    """Replace a monitor's settings; raises psycopg.errors.UniqueViolation on a taken URL."""
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(UPDATE_MONITOR, {"id": monitor_id, **vars(fields)})
        row = await cursor.fetchone()
        if row is not None:
            await claims.notify(conn, CHANNEL)
    return row


async def delete_monitor(pool: Pool, monitor_id: uuid.UUID) -> bool:
    """Delete a monitor; its stored checks stay until retention drops their partitions."""
    async with pool.connection() as conn:
        cursor = await conn.execute(DELETE_MONITOR, {"id": monitor_id})
        return cursor.rowcount == 1


async def sync_monitor(pool: Pool, fields: MonitorFields, *, dry_run: bool = False) -> str:
    """Insert or update the monitor of `fields.url`: "created", "updated" or "unchanged".
    A dry run says which, and rolls the change back."""
    async with pool.connection() as conn, conn.transaction(force_rollback=dry_run):
        cursor = await conn.execute(SELECT_MONITOR_BY_URL, {"url": fields.url})
        current = await cursor.fetchone()
        if current is None:
            await conn.execute(INSERT_MONITOR, {"id": uuid.uuid4(), **vars(fields)})
            outcome = "created"
        elif all(current[name] == value for name, value in vars(fields).items()):
            return "unchanged"
        else:
            await conn.execute(UPDATE_MONITOR, {"id": current["id"], **vars(fields)})
            outcome = "updated"
        await claims.notify(conn, CHANNEL)
    return outcome


async def delete_monitors_not_listed(
    pool: Pool, urls: list[str], *, dry_run: bool = False
) -> list[str]:
    """Delete every monitor whose URL is not in `urls`; return their URLs. A dry run rolls the
    deletion back."""
    async with pool.connection() as conn, conn.transaction(force_rollback=dry_run):
        cursor = await conn.execute(DELETE_MONITORS_NOT_LISTED, {"urls": urls})
        deleted = sorted(row["url"] for row in await cursor.fetchall())
        if deleted:
            await claims.notify(conn, CHANNEL)
    return deleted


async def reschedule_checked(
    pool: Pool, checked: list[tuple[uuid.UUID, datetime]], owner: str
) -> list[bool]:
    """Move checked monitors (id, the slot checked) to their next slot; say of each whether it
    moved. A monitor changed or re-leased meanwhile is not moved by this checker."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            RESCHEDULE_CHECKED,
            {
                "ids": [monitor_id for monitor_id, _ in checked],
                "due_ats": [due_at for _, due_at in checked],
                "owner": owner,
            },
        )
        moved = {row["id"] for row in await cursor.fetchall()}
    return [monitor_id in moved for monitor_id, _ in checked]


# --- Check results: day partitions -------------------------------------------------------------

PARTITION_PREFIX = "checks_p"

# Serialises partition creation between sinks, which would otherwise race on the catalogue.
PARTITION_LOCK = """
    SELECT pg_advisory_xact_lock(hashtext('errands.checks.partitions'))
"""

CREATE_PARTITION = """
    CREATE TABLE IF NOT EXISTS {partition}
    PARTITION OF checks
    FOR VALUES FROM ({start}) TO ({end})
"""

LIST_PARTITIONS = """
    SELECT child.relname AS name
      FROM pg_inherits
      JOIN pg_class AS child ON child.oid = pg_inherits.inhrelid
     WHERE pg_inherits.inhparent = 'checks'::regclass
"""

DROP_PARTITION = "DROP TABLE IF EXISTS {partition}"

DELETE_OLD_ROLLUPS = """
    DELETE FROM check_rollups
     WHERE hour < %(cutoff)s
"""


def partition_name(day: date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _create_partitions(conn: Connection, days: set[date]) -> None:
    await conn.execute(PARTITION_LOCK)
    for day in sorted(days):
        await conn.execute(
            sql.SQL(CREATE_PARTITION).format(
                partition=sql.Identifier(partition_name(day)),
                start=sql.Literal(_day_start(day)),
                end=sql.Literal(_day_start(day + timedelta(days=1))),
            )
        )


async def ensure_partitions(pool: Pool, days: set[date]) -> None:
    """Create the day partitions of `days` that do not exist yet."""
    async with pool.connection() as conn, conn.transaction():
        await _create_partitions(conn, days)


async def drop_expired(pool: Pool, cutoff: date) -> list[str]:
    """Drop the day partitions wholly before `cutoff` and the rollups before it; return the
    names of the dropped partitions."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(PARTITION_LOCK)
        cursor = await conn.execute(LIST_PARTITIONS)
        expired = [
            row["name"]
            for row in await cursor.fetchall()
            if row["name"].startswith(PARTITION_PREFIX) and row["name"] < partition_name(cutoff)
        ]
        for name in sorted(expired):
            await conn.execute(sql.SQL(DROP_PARTITION).format(partition=sql.Identifier(name)))
        await conn.execute(DELETE_OLD_ROLLUPS, {"cutoff": _day_start(cutoff)})
    return sorted(expired)


# --- Check results: storing a batch -----------------------------------------------------------
#
# A batch goes through two staging tables that live as long as the connection and are emptied at
# each commit: the raw messages are copied into `checks_messages` and cast into typed rows in
# `checks_incoming` by PostgreSQL (fast: no per-message work in Python). If any message cannot be
# cast (not JSON, a malformed id), that step is rolled back and the batch is decoded in Python
# instead, leaving out the bad messages. The typed rows are then inserted and rolled up.

CREATE_STAGING = """
    CREATE TEMPORARY TABLE IF NOT EXISTS checks_messages (
        message jsonb
    ) ON COMMIT DELETE ROWS;

    CREATE TEMPORARY TABLE IF NOT EXISTS checks_incoming (
        monitor_id       uuid,
        check_id         uuid,
        checked_at       timestamptz,
        response_time_ms real,
        dns_ms           real,
        connect_ms       real,
        tls_ms           real,
        first_byte_ms    real,
        status_code      smallint,
        regex_matched    boolean,
        error_kind       text,
        error            text
    ) ON COMMIT DELETE ROWS
"""

COPY_MESSAGES = "COPY checks_messages (message) FROM STDIN"

# The rules of results.decode_check, a message that breaks one being left out, except that the
# casts also take a scalar of another JSON type they can read (a number or the schema written
# as a string, a boolean as "yes" or 1), which decode_check refuses. The checker never writes
# those.
CAST_MESSAGES = """
    INSERT INTO checks_incoming (
           monitor_id, check_id, checked_at, response_time_ms, dns_ms, connect_ms, tls_ms,
           first_byte_ms, status_code, regex_matched, error_kind, error
    )
    SELECT *
      FROM (SELECT (message ->> 'monitor_id')::uuid AS monitor_id,
                   (message ->> 'check_id')::uuid AS check_id,
                   (message ->> 'checked_at')::timestamptz AS checked_at,
                   (message ->> 'response_time_ms')::real AS response_time_ms,
                   (message ->> 'dns_ms')::real AS dns_ms,
                   (message ->> 'connect_ms')::real AS connect_ms,
                   (message ->> 'tls_ms')::real AS tls_ms,
                   (message ->> 'first_byte_ms')::real AS first_byte_ms,
                   (message ->> 'status_code')::smallint AS status_code,
                   (message ->> 'regex_matched')::boolean AS regex_matched,
                   message ->> 'error_kind' AS error_kind,
                   message ->> 'error' AS error
              FROM checks_messages
             WHERE message ->> 'schema' = '1'
               AND message ->> 'checked_at' ~ '(Z|[+-]\\d\\d(:?\\d\\d)?)$'
           ) AS typed
     WHERE monitor_id IS NOT NULL
       AND check_id IS NOT NULL
       AND (status_code IS NULL OR status_code BETWEEN 100 AND 999)
       AND (error_kind IS NULL OR error_kind IN ('dns', 'connect', 'tls', 'timeout', 'other'))
       AND coalesce(least(response_time_ms, dns_ms, connect_ms, tls_ms, first_byte_ms), 0) >= 0
"""

COPY_DECODED = """
    COPY checks_incoming (
           monitor_id, check_id, checked_at, response_time_ms, dns_ms, connect_ms, tls_ms,
           first_byte_ms, status_code, regex_matched, error_kind, error
    ) FROM STDIN
"""

STAGED_DAYS = """
    SELECT DISTINCT (checked_at AT TIME ZONE 'UTC')::date AS day
      FROM checks_incoming
     WHERE checked_at BETWEEN %(oldest)s AND %(newest)s
"""

# Only the rows this statement inserted feed the rollups, so a redelivered batch changes
# neither table. `up` follows results.is_up. An existing rollup adds the new histogram counts
# element by element.
STORE_STAGED = """
    WITH inserted AS (
        INSERT INTO checks (
               monitor_id, check_id, checked_at, response_time_ms, dns_ms, connect_ms, tls_ms,
               first_byte_ms, status_code, up, regex_matched, error_kind, error
        )
        SELECT monitor_id, check_id, checked_at, response_time_ms, dns_ms, connect_ms, tls_ms,
               first_byte_ms, status_code,
               coalesce(error_kind IS NULL AND status_code < 400 AND regex_matched IS NOT FALSE,
                        false),
               regex_matched, error_kind, error
          FROM checks_incoming
         WHERE checked_at BETWEEN %(oldest)s AND %(newest)s
            ON CONFLICT DO NOTHING
     RETURNING monitor_id, checked_at, up, response_time_ms
    ),
    rolled_up AS (
        INSERT INTO check_rollups AS r (
            monitor_id, hour, checks, up, responses, sum_ms, min_ms, max_ms, latency_histogram
        )
        SELECT monitor_id,
               date_trunc('hour', checked_at, 'UTC'),
               count(*),
               count(*) FILTER (WHERE up),
               count(response_time_ms),
               coalesce(sum(response_time_ms), 0),
               min(response_time_ms),
               max(response_time_ms),
               latency_histogram(
                   width_bucket(response_time_ms::float8, %(bounds)s::float8[]),
                   %(histogram_size)s
               )
          FROM inserted
         GROUP BY 1, 2
            ON CONFLICT (monitor_id, hour) DO UPDATE
           SET checks = r.checks + excluded.checks,
               up = r.up + excluded.up,
               responses = r.responses + excluded.responses,
               sum_ms = r.sum_ms + excluded.sum_ms,
               min_ms = least(r.min_ms, excluded.min_ms),
               max_ms = greatest(r.max_ms, excluded.max_ms),
               latency_histogram = ARRAY(
                   SELECT old + new
                     FROM unnest(r.latency_histogram, excluded.latency_histogram)
                          WITH ORDINALITY AS pair(old, new, position)
                    ORDER BY position
               )
    )
    SELECT (SELECT count(*)
              FROM checks_incoming
             WHERE checked_at BETWEEN %(oldest)s AND %(newest)s) AS accepted,
           (SELECT count(*) FROM inserted) AS inserted
"""

# COPY's text format gives these bytes a meaning; JSON text never needs them unescaped.
_COPY_ESCAPES = ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t"))


def _copy_line(value: bytes) -> bytes:
    for raw, escaped in _COPY_ESCAPES:
        value = value.replace(raw, escaped)
    return value + b"\n"


def _decoded_row(result: CheckResult) -> tuple[Any, ...]:
    return (
        result.monitor_id,
        result.check_id,
        result.checked_at,
        result.response_time_ms,
        result.dns_ms,
        result.connect_ms,
        result.tls_ms,
        result.first_byte_ms,
        result.status_code,
        result.regex_matched,
        result.error_kind,
        None if result.error is None else _storable_text(result.error),
    )


def _storable_text(text: str) -> str:
    """PostgreSQL text holds neither NUL nor a lone surrogate (JSON can carry both); an error
    message needs neither."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


async def _stage(conn: Connection, values: list[bytes]) -> None:
    try:
        async with conn.transaction():
            async with conn.cursor().copy(COPY_MESSAGES) as copy:
                await copy.write(b"".join(_copy_line(value) for value in values))
            await conn.execute(CAST_MESSAGES)
        return
    except (psycopg.DataError, psycopg.errors.StatementTooComplex):
        pass  # some message is not even castable (or nested too deep): decode one by one below
    async with conn.cursor().copy(COPY_DECODED) as copy:
        for value in values:
            try:
                result = decode_check(value)
            except InvalidCheckMessage:
                continue
            await copy.write_row(_decoded_row(result))


@dataclass(frozen=True)
class StoredBatch:
    stored: int  # new rows; a redelivered message is not counted again
    skipped: int  # messages left out: malformed, or dated outside [oldest, newest]


async def save_checks(
    pool: Pool,
    values: list[bytes],
    *,
    oldest: datetime,
    newest: datetime,
    known_days: set[date],
) -> StoredBatch:
    """Store a batch of check messages and their rollups in one transaction.

    Messages dated outside [oldest, newest] are left out. Day partitions missing from
    `known_days` are created in the same transaction, and `known_days` is updated after it
    commits."""
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute(CREATE_STAGING)
            await _stage(conn, values)
            cursor = await conn.execute(STAGED_DAYS, {"oldest": oldest, "newest": newest})
            days = {row["day"] for row in await cursor.fetchall()}
            if days - known_days:
                await _create_partitions(conn, days - known_days)
            cursor = await conn.execute(
                STORE_STAGED,
                {
                    "oldest": oldest,
                    "newest": newest,
                    "bounds": list(LATENCY_BOUNDS_MS),
                    "histogram_size": HISTOGRAM_SIZE,
                },
            )
            row = await cursor.fetchone()
        known_days |= days
    assert row is not None  # a SELECT without FROM returns one row
    inserted = int(row["inserted"])
    return StoredBatch(stored=inserted, skipped=len(values) - int(row["accepted"]))


# --- Queries ------------------------------------------------------------------------------------

SELECT_RECENT_CHECKS = """
    SELECT check_id, checked_at, status_code, response_time_ms, dns_ms, connect_ms, tls_ms,
           first_byte_ms, up, regex_matched, error_kind, error
      FROM checks
     WHERE monitor_id = %(monitor_id)s
       AND checked_at >= %(since)s
       AND checked_at < %(until)s
     ORDER BY checked_at DESC
     LIMIT %(limit)s
"""

RAW_UPTIME = """
    SELECT count(*) AS checks,
           count(*) FILTER (WHERE up) AS up,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY response_time_ms) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms) AS p95_ms
      FROM checks
     WHERE monitor_id = %(monitor_id)s
       AND checked_at >= %(since)s
       AND checked_at < %(until)s
"""

ROLLUP_UPTIME = """
    SELECT coalesce(sum(checks), 0) AS checks,
           coalesce(sum(up), 0) AS up,
           min(min_ms) AS min_ms,
           max(max_ms) AS max_ms,
           (SELECT array_agg(total ORDER BY position)
              FROM (SELECT position, sum(n)::integer AS total
                      FROM check_rollups AS r,
                           unnest(r.latency_histogram) WITH ORDINALITY AS bucket(n, position)
                     WHERE r.monitor_id = %(monitor_id)s
                       AND r.hour >= %(since)s
                       AND r.hour < %(until)s
                     GROUP BY position) AS summed
           ) AS histogram
      FROM check_rollups
     WHERE monitor_id = %(monitor_id)s
       AND hour >= %(since)s
       AND hour < %(until)s
"""

# The partial hours at either end of a rollup window, read from the raw checks.
EDGE_CHECKS = """
    SELECT up, response_time_ms
      FROM checks
     WHERE monitor_id = %(monitor_id)s
       AND (   (checked_at >= %(since)s AND checked_at < %(first_hour)s)
            OR (checked_at >= %(last_hour)s AND checked_at < %(until)s))
"""


@dataclass(frozen=True)
class Uptime:
    checks: int
    up: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def uptime_pct(self) -> float | None:
        return None if self.checks == 0 else round(100.0 * self.up / self.checks, 3)


async def recent_checks(
    pool: Pool, monitor_id: uuid.UUID, since: datetime, until: datetime, limit: int
) -> list[Row]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            SELECT_RECENT_CHECKS,
            {"monitor_id": monitor_id, "since": since, "until": until, "limit": limit},
        )
        return await cursor.fetchall()


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def uptime_from_raw(
    pool: Pool, monitor_id: uuid.UUID, since: datetime, until: datetime
) -> Uptime:
    """Exact figures from every check in the window."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            RAW_UPTIME, {"monitor_id": monitor_id, "since": since, "until": until}
        )
        row = await cursor.fetchone()
    assert row is not None  # an aggregate always returns one row
    return Uptime(int(row["checks"]), int(row["up"]), _ms(row["p50_ms"]), _ms(row["p95_ms"]))


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def uptime_from_rollups(
    pool: Pool, monitor_id: uuid.UUID, since: datetime, until: datetime
) -> Uptime:
    """Whole hours from the rollups and the partial hours at both ends from the raw checks:
    counts are exact, percentiles are read from the latency histogram."""
    first_hour = _hour_floor(since)
    if first_hour < since:
        first_hour += timedelta(hours=1)
    last_hour = max(_hour_floor(until), first_hour)
    params = {
        "monitor_id": monitor_id,
        "since": first_hour,
        "until": last_hour,
    }
    edge_params = {
        "monitor_id": monitor_id,
        "since": since,
        "first_hour": first_hour,
        "last_hour": last_hour,
        "until": until,
    }
    async with pool.connection() as conn:
        cursor = await conn.execute(ROLLUP_UPTIME, params)
        rolled = await cursor.fetchone()
        cursor = await conn.execute(EDGE_CHECKS, edge_params)
        edges = await cursor.fetchall()
    assert rolled is not None  # an aggregate always returns one row
    histogram = list(rolled["histogram"] or [0] * HISTOGRAM_SIZE)
    latencies = [
        float(row["response_time_ms"]) for row in edges if row["response_time_ms"] is not None
    ]
    for bucket, count in enumerate(histogram_of(latencies)):
        histogram[bucket] += count
    lows = [v for v in (rolled["min_ms"], min(latencies, default=None)) if v is not None]
    highs = [v for v in (rolled["max_ms"], max(latencies, default=None)) if v is not None]
    low, high = (min(lows), max(highs)) if lows else (None, None)
    return Uptime(
        checks=int(rolled["checks"]) + len(edges),
        up=int(rolled["up"]) + sum(1 for row in edges if row["up"]),
        p50_ms=percentile_from_histogram(histogram, 0.5, low, high),
        p95_ms=percentile_from_histogram(histogram, 0.95, low, high),
    )
