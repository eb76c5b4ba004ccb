"""The SQL of monitors: the monitors table, the day-partitioned checks and their hourly rollups."""

import itertools
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from errands.core import claims, delivery
from errands.core.db import Pool
from errands.core.errors import Unprocessable
from errands.monitors import alerts, maintenance
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
DELIVERY_SOURCE = "monitors"

Row = dict[str, Any]
Connection = psycopg.AsyncConnection[Row]


@dataclass(frozen=True)
class MonitorFields:
    url: str
    interval_s: int
    timeout_s: float
    method: str
    regex: str | None
    name: str | None = None
    failure_threshold: int = 3
    success_threshold: int = 1
    expected_status: str = "200-399"
    max_response_ms: float | None = None
    regex_mode: str = "must_match"
    tls_expiry_days: int = 14
    paused: bool = False
    public: bool = False
    channels: tuple[uuid.UUID, ...] = ()

    def columns(self) -> dict[str, Any]:
        """The values of the monitors table's own columns (channels live in monitor_channels)."""
        values = vars(self).copy()
        del values["channels"]
        return values


class UnknownChannels(Unprocessable):
    """A monitor names channels that do not exist."""


class UnknownMonitors(Unprocessable):
    """A maintenance window names monitors that do not exist."""


# A new or changed monitor is checked at once (a paused one never); its later slots follow
# from that first one.
INSERT_MONITOR = """
    INSERT INTO monitors (
           id, url, name, method, interval_s, timeout_s, regex, regex_mode, expected_status,
           max_response_ms, failure_threshold, success_threshold, tls_expiry_days, paused,
           public, due_at
    )
    VALUES (
           %(id)s, %(url)s, %(name)s, %(method)s, %(interval_s)s, %(timeout_s)s, %(regex)s,
           %(regex_mode)s, %(expected_status)s, %(max_response_ms)s, %(failure_threshold)s,
           %(success_threshold)s, %(tls_expiry_days)s, %(paused)s, %(public)s,
           CASE WHEN %(paused)s THEN NULL ELSE now() END
    )
    ON CONFLICT (url) DO NOTHING
    RETURNING id
"""

# A monitor as the API shows it, with its state and channels; each query adds its own clauses.
MONITOR_VIEW = """
    SELECT id, url, name, monitor_display_name(name, url) AS display_name, method, interval_s,
           timeout_s, regex, regex_mode, expected_status, max_response_ms, failure_threshold,
           success_threshold, tls_expiry_days, paused, public, coalesce(s.state, 'new') AS state,
           s.state_since, created_at, updated_at, due_at,
           ARRAY(SELECT channel_id
                   FROM monitor_channels
                  WHERE monitor_id = monitors.id
                  ORDER BY channel_id) AS channels
      FROM monitors
      LEFT JOIN monitor_states AS s ON s.monitor_id = monitors.id
"""

SELECT_MONITORS = (
    MONITOR_VIEW
    + """
     ORDER BY created_at, id
     LIMIT %(limit)s
    OFFSET %(offset)s
"""
)

SELECT_MONITOR = MONITOR_VIEW + " WHERE id = %(id)s"

SELECT_MONITOR_BY_URL = MONITOR_VIEW + " WHERE url = %(url)s FOR UPDATE OF monitors"

# Clearing the lease makes a checker that is mid-check on the old settings write nothing back.
UPDATE_MONITOR = """
    UPDATE monitors
       SET url = %(url)s,
           name = %(name)s,
           method = %(method)s,
           interval_s = %(interval_s)s,
           timeout_s = %(timeout_s)s,
           regex = %(regex)s,
           regex_mode = %(regex_mode)s,
           expected_status = %(expected_status)s,
           max_response_ms = %(max_response_ms)s,
           failure_threshold = %(failure_threshold)s,
           success_threshold = %(success_threshold)s,
           tls_expiry_days = %(tls_expiry_days)s,
           paused = %(paused)s,
           public = %(public)s,
           updated_at = now(),
           due_at = CASE WHEN %(paused)s THEN NULL ELSE now() END,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
 RETURNING id
"""

DELETE_MONITOR_CHANNELS = """
    DELETE FROM monitor_channels
     WHERE monitor_id = %(id)s
"""

INSERT_MONITOR_CHANNELS = """
    INSERT INTO monitor_channels (monitor_id, channel_id)
    SELECT %(id)s, channels.id
      FROM channels
     WHERE channels.id = ANY(%(channels)s)
"""

SELECT_MONITOR_IDS = """
    SELECT id
      FROM monitors
     WHERE id = ANY(%(ids)s)
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
      FROM unnest(%(ids)b::uuid[], %(due_ats)b::timestamptz[]) AS checked(id, due_at)
     WHERE monitors.id = checked.id
       AND monitors.due_at = checked.due_at
       AND monitors.lease_owner = %(owner)s
 RETURNING monitors.id
"""


async def _set_channels(
    conn: Connection, monitor_id: uuid.UUID, channels: tuple[uuid.UUID, ...]
) -> None:
    await conn.execute(DELETE_MONITOR_CHANNELS, {"id": monitor_id})
    wanted = sorted(set(channels))
    if not wanted:
        return
    cursor = await conn.execute(INSERT_MONITOR_CHANNELS, {"id": monitor_id, "channels": wanted})
    if cursor.rowcount != len(wanted):
        cursor = await conn.execute(SELECT_CHANNEL_IDS, {"ids": wanted})
        found = {row["id"] for row in await cursor.fetchall()}
        missing = ", ".join(str(channel) for channel in wanted if channel not in found)
        raise UnknownChannels(f"no channel {missing}")


async def _monitor_row(conn: Connection, monitor_id: uuid.UUID) -> Row:
    cursor = await conn.execute(SELECT_MONITOR, {"id": monitor_id})
    row = await cursor.fetchone()
    assert row is not None  # read in the transaction that wrote it
    return row


async def create_monitor(pool: Pool, fields: MonitorFields) -> Row | uuid.UUID:
    """Insert a monitor and wake the checkers; when its URL is already monitored, return that
    monitor's id instead. Raises UnknownChannels, writing nothing, for a channel that does
    not exist."""
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(INSERT_MONITOR, {"id": uuid.uuid4(), **fields.columns()})
        inserted = await cursor.fetchone()
        if inserted is None:
            cursor = await conn.execute(SELECT_MONITOR_BY_URL, {"url": fields.url})
            existing = await cursor.fetchone()
            assert existing is not None  # urls are never changed to free one up mid-statement
            existing_id: uuid.UUID = existing["id"]
            return existing_id
        await _set_channels(conn, inserted["id"], fields.channels)
        await claims.notify(conn, CHANNEL)
        return await _monitor_row(conn, inserted["id"])


async def list_monitors(pool: Pool, limit: int, offset: int) -> list[Row]:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_MONITORS, {"limit": limit, "offset": offset})
        return await cursor.fetchall()


async def get_monitor(pool: Pool, monitor_id: uuid.UUID) -> Row | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_MONITOR, {"id": monitor_id})
        return await cursor.fetchone()


async def monitor_with_url(pool: Pool, url: str) -> uuid.UUID | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_MONITOR_BY_URL, {"url": url})
        row = await cursor.fetchone()
    return None if row is None else row["id"]


async def update_monitor(pool: Pool, monitor_id: uuid.UUID, fields: MonitorFields) -> Row | None:
    """Replace a monitor's settings; raises psycopg.errors.UniqueViolation on a taken URL and
    UnknownChannels for a channel that does not exist."""
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(UPDATE_MONITOR, {"id": monitor_id, **fields.columns()})
        if await cursor.fetchone() is None:
            return None
        await _set_channels(conn, monitor_id, fields.channels)
        await claims.notify(conn, CHANNEL)
        return await _monitor_row(conn, monitor_id)


async def delete_monitor(pool: Pool, monitor_id: uuid.UUID) -> bool:
    """Delete a monitor; its stored checks stay until retention drops their partitions."""
    async with pool.connection() as conn:
        cursor = await conn.execute(DELETE_MONITOR, {"id": monitor_id})
        return cursor.rowcount == 1


def _unchanged(current: Row, fields: MonitorFields) -> bool:
    return all(current[name] == value for name, value in fields.columns().items()) and tuple(
        current["channels"]
    ) == tuple(sorted(set(fields.channels)))


async def sync_monitor(conn: Connection, fields: MonitorFields) -> str:
    """Insert or update the monitor of `fields.url` in the caller's transaction: "created",
    "updated" or "unchanged". Raises UnknownChannels for a channel that does not exist."""
    cursor = await conn.execute(SELECT_MONITOR_BY_URL, {"url": fields.url})
    current = await cursor.fetchone()
    if current is None:
        monitor_id = uuid.uuid4()
        await conn.execute(INSERT_MONITOR, {"id": monitor_id, **fields.columns()})
        outcome = "created"
    elif _unchanged(current, fields):
        return "unchanged"
    else:
        monitor_id = current["id"]
        await conn.execute(UPDATE_MONITOR, {"id": monitor_id, **fields.columns()})
        outcome = "updated"
    await _set_channels(conn, monitor_id, fields.channels)
    await claims.notify(conn, CHANNEL)
    return outcome


async def delete_monitors_not_listed(conn: Connection, urls: list[str]) -> list[str]:
    """Delete, in the caller's transaction, every monitor whose URL is not in `urls`; return
    their URLs."""
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


# --- Channels ------------------------------------------------------------------------------------

INSERT_CHANNEL = """
    INSERT INTO channels (id, name, kind, target)
    VALUES (%(id)s, %(name)s, %(kind)s, %(target)s)
    RETURNING id, name, kind, target, created_at
"""

SELECT_CHANNELS = """
    SELECT id, name, kind, target, created_at
      FROM channels
     ORDER BY created_at, id
"""

SELECT_CHANNEL = """
    SELECT id, name, kind, target, created_at
      FROM channels
     WHERE id = %(id)s
"""

SELECT_CHANNEL_IDS = """
    SELECT id
      FROM channels
     WHERE id = ANY(%(ids)s)
"""

DELETE_CHANNEL = """
    DELETE FROM channels
     WHERE id = %(id)s
"""


async def create_channel(pool: Pool, *, name: str, kind: str, target: str) -> Row:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            INSERT_CHANNEL, {"id": uuid.uuid4(), "name": name, "kind": kind, "target": target}
        )
        row = await cursor.fetchone()
    assert row is not None
    return row


async def list_channels(pool: Pool) -> list[Row]:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_CHANNELS)
        return await cursor.fetchall()


async def get_channel(pool: Pool, channel_id: uuid.UUID) -> Row | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_CHANNEL, {"id": channel_id})
        return await cursor.fetchone()


def _channel_message(
    kind: str,
    target: str,
    *,
    text: str,
    document: bytes,
    delivery_id: uuid.UUID,
) -> delivery.NewDelivery:
    """A message to a channel as the delivery loop sends it: an Apprise channel (chat, e-mail)
    gets the `text` a person reads, a webhook the JSON `document`, signed as it leaves."""
    if kind == "apprise":
        return delivery.NewDelivery(
            url=target,
            body=text.encode(),
            source=DELIVERY_SOURCE,
            id=delivery_id,
            transport="apprise",
        )
    return delivery.NewDelivery(
        url=target,
        body=document,
        source=DELIVERY_SOURCE,
        headers={"Content-Type": "application/json"},
        id=delivery_id,
    )


async def enqueue_test(pool: Pool, channel: Row, *, text: str, document: bytes) -> uuid.UUID:
    """Queue one message to the channel, as an alert would be; the delivery's id."""
    message = _channel_message(
        channel["kind"], channel["target"], text=text, document=document, delivery_id=uuid.uuid4()
    )
    async with pool.connection() as conn, conn.transaction():
        await delivery.enqueue_all(conn, [message])
    return message.id


async def delete_channel(pool: Pool, channel_id: uuid.UUID) -> bool:
    """Delete a channel; monitors that named it stop notifying it."""
    async with pool.connection() as conn:
        cursor = await conn.execute(DELETE_CHANNEL, {"id": channel_id})
        return cursor.rowcount == 1


# --- Maintenance windows ----------------------------------------------------------------------

INSERT_WINDOW = """
    INSERT INTO maintenance_windows (id, monitor_ids, starts_at, ends_at, cron, duration_s)
    VALUES (%(id)s, %(monitor_ids)s, %(starts_at)s, %(ends_at)s, %(cron)s, %(duration_s)s)
    RETURNING id, monitor_ids, starts_at, ends_at, cron, duration_s, created_at
"""

SELECT_WINDOWS = """
    SELECT id, monitor_ids, starts_at, ends_at, cron, duration_s, created_at
      FROM maintenance_windows
     ORDER BY starts_at, id
"""

DELETE_WINDOW = """
    DELETE FROM maintenance_windows
     WHERE id = %(id)s
"""

# The windows that may cover a monitor between two times (cron windows are then checked one by
# one in Python).
SELECT_WINDOWS_OF = """
    SELECT id, monitor_ids, starts_at, ends_at, cron, duration_s, created_at
      FROM maintenance_windows
     WHERE (monitor_ids IS NULL OR monitor_ids && %(monitor_ids)b::uuid[])
       AND starts_at < %(until)s
       AND (ends_at IS NULL OR ends_at > %(since)s)
"""


async def create_window(
    pool: Pool,
    *,
    monitor_ids: list[uuid.UUID] | None,
    starts_at: datetime,
    ends_at: datetime | None,
    cron: str | None,
    duration_s: int | None,
) -> Row:
    """Store a maintenance window; raises UnknownMonitors naming ids that are not monitors."""
    async with pool.connection() as conn, conn.transaction():
        if monitor_ids:
            cursor = await conn.execute(SELECT_MONITOR_IDS, {"ids": monitor_ids})
            found = {row["id"] for row in await cursor.fetchall()}
            missing = [str(monitor_id) for monitor_id in monitor_ids if monitor_id not in found]
            if missing:
                raise UnknownMonitors(f"no monitor {', '.join(missing)}")
        cursor = await conn.execute(
            INSERT_WINDOW,
            {
                "id": uuid.uuid4(),
                "monitor_ids": monitor_ids,
                "starts_at": starts_at,
                "ends_at": ends_at,
                "cron": cron,
                "duration_s": duration_s,
            },
        )
        row = await cursor.fetchone()
    assert row is not None
    return row


async def list_windows(pool: Pool) -> list[Row]:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_WINDOWS)
        return await cursor.fetchall()


async def delete_window(pool: Pool, window_id: uuid.UUID) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute(DELETE_WINDOW, {"id": window_id})
        return cursor.rowcount == 1


async def windows_of(
    conn: Connection, monitor_ids: list[uuid.UUID], since: datetime, until: datetime
) -> list[Row]:
    cursor = await conn.execute(
        SELECT_WINDOWS_OF, {"monitor_ids": monitor_ids, "since": since, "until": until}
    )
    return await cursor.fetchall()


async def windows_of_monitor(
    pool: Pool, monitor_id: uuid.UUID, since: datetime, until: datetime
) -> list[Row]:
    async with pool.connection() as conn:
        return await windows_of(conn, [monitor_id], since, until)


# --- Incidents --------------------------------------------------------------------------------

# Failed checks are counted from the checks themselves, between the incident's start and its
# end (or now): those that were down, and for a degraded incident also those too slow.
SELECT_INCIDENTS = """
    SELECT i.id, i.state, i.cause, i.started_at, i.resolved_at,
           (SELECT count(*)
              FROM checks AS c
             WHERE c.monitor_id = i.monitor_id
               AND c.checked_at >= i.started_at
               AND c.checked_at <= coalesce(i.resolved_at, now())
               AND (NOT c.up OR (i.state = 'degraded' AND c.response_time_ms > m.max_response_ms))
           ) AS failed_checks
      FROM incidents AS i
      JOIN monitors AS m ON m.id = i.monitor_id
     WHERE i.monitor_id = %(monitor_id)s
     ORDER BY i.started_at DESC
     LIMIT %(limit)s
"""


async def list_incidents(pool: Pool, monitor_id: uuid.UUID, limit: int) -> list[Row]:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_INCIDENTS, {"monitor_id": monitor_id, "limit": limit})
        return await cursor.fetchall()


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


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _create_partitions(conn: Connection, days: set[date]) -> None:
    await conn.execute(PARTITION_LOCK)
    for day in sorted(days):
        await conn.execute(
            sql.SQL(CREATE_PARTITION).format(
                partition=sql.Identifier(partition_name(day)),
                start=sql.Literal(day_start(day)),
                end=sql.Literal(day_start(day + timedelta(days=1))),
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
        await conn.execute(DELETE_OLD_ROLLUPS, {"cutoff": day_start(cutoff)})
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
        error            text,
        accepted         boolean,
        tls_expires_at   timestamptz
    ) ON COMMIT DELETE ROWS;

    CREATE TEMPORARY TABLE IF NOT EXISTS checks_stored (
        monitor_id       uuid,
        check_id         uuid,
        checked_at       timestamptz,
        up               boolean,
        status_code      smallint,
        response_time_ms real,
        error            text,
        tls_expires_at   timestamptz
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
           first_byte_ms, status_code, regex_matched, error_kind, error, accepted, tls_expires_at
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
                   message ->> 'error' AS error,
                   (message ->> 'accepted')::boolean AS accepted,
                   (message ->> 'tls_expires_at')::timestamptz AS tls_expires_at
              FROM checks_messages
             WHERE message ->> 'schema' = '1'
               AND message ->> 'checked_at' ~ '(Z|[+-]\\d\\d(:?\\d\\d)?)$'
               AND coalesce(message ->> 'tls_expires_at', 'Z') ~ '(Z|[+-]\\d\\d(:?\\d\\d)?)$'
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
           first_byte_ms, status_code, regex_matched, error_kind, error, accepted, tls_expires_at
    ) FROM STDIN
"""

STAGED_DAYS = """
    SELECT DISTINCT (checked_at AT TIME ZONE 'UTC')::date AS day
      FROM checks_incoming
     WHERE checked_at BETWEEN %(oldest)s AND %(newest)s
"""

# Only the rows this statement inserted feed the rollups and the alert state (through
# checks_stored), so a redelivered batch changes none of them. `up` follows CheckResult.up: the
# monitor's own rules' verdict, or results.is_up for messages without one. An existing rollup
# adds the new histogram counts element by element.
STORE_STAGED = """
    WITH inserted AS (
        INSERT INTO checks (
               monitor_id, check_id, checked_at, response_time_ms, dns_ms, connect_ms, tls_ms,
               first_byte_ms, status_code, up, regex_matched, error_kind, error, tls_expires_at
        )
        SELECT monitor_id, check_id, checked_at, response_time_ms, dns_ms, connect_ms, tls_ms,
               first_byte_ms, status_code,
               coalesce(accepted AND error_kind IS NULL,
                        error_kind IS NULL AND status_code < 400 AND regex_matched IS NOT FALSE,
                        false),
               regex_matched, error_kind, error, tls_expires_at
          FROM checks_incoming
         WHERE checked_at BETWEEN %(oldest)s AND %(newest)s
            ON CONFLICT DO NOTHING
     RETURNING monitor_id, check_id, checked_at, up, status_code, response_time_ms, error,
               tls_expires_at
    ),
    noted AS (
        INSERT INTO checks_stored (
               monitor_id, check_id, checked_at, up, status_code, response_time_ms, error,
               tls_expires_at
        )
        SELECT monitor_id, check_id, checked_at, up, status_code, response_time_ms, error,
               tls_expires_at
          FROM inserted
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
                   width_bucket(response_time_ms::float8, %(bounds)b::float8[]),
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
        result.accepted,
        result.tls_expires_at,
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
            notifications = await _advance_alerts(conn)
            if notifications:
                await delivery.enqueue_all(conn, [_delivery_of(item) for item in notifications])
        known_days |= days
    assert row is not None  # a SELECT without FROM returns one row
    inserted = int(row["inserted"])
    return StoredBatch(stored=inserted, skipped=len(values) - int(row["accepted"]))


# --- Alert state: decided as checks are stored -------------------------------------------------
#
# In the transaction that stores a batch, the checks it inserted (checks_stored) move their
# monitors' alert state on (alerts.advance). A monitor's new state is written only where it is
# still the state that was read (Healthchecks' "flip": one writer wins), and the incidents,
# alerts and delivery rows of its transitions commit with the checks, so a sink that dies
# anywhere either stored the checks with their alerts or neither.

# The checks just stored of the monitors whose state they can change: a verdict other than the
# state, a run in progress, or a certificate to warn about. In steady state this is nothing.
JUDGE_STORED = """
    WITH judged AS (
        SELECT m.id AS monitor_id, monitor_display_name(m.name, m.url) AS name, m.url,
               m.failure_threshold, m.success_threshold,
               m.max_response_ms,
               st.monitor_id IS NOT NULL AS has_state,
               coalesce(st.state, 'new') AS state, st.state_since, st.pending_state,
               coalesce(st.pending_checks, 0) AS pending_checks, st.pending_since,
               st.tls_warned_for,
               s.check_id, s.checked_at, s.status_code, s.response_time_ms, s.error,
               s.tls_expires_at,
               CASE WHEN NOT s.up THEN 'down'
                    WHEN s.response_time_ms > m.max_response_ms THEN 'degraded'
                    ELSE 'up'
               END AS verdict,
               coalesce(s.tls_expires_at < s.checked_at + make_interval(days => m.tls_expiry_days)
                        AND s.tls_expires_at IS DISTINCT FROM st.tls_warned_for,
                        false) AS tls_expiring
          FROM checks_stored AS s
          JOIN monitors AS m ON m.id = s.monitor_id
          LEFT JOIN monitor_states AS st ON st.monitor_id = s.monitor_id
         WHERE NOT m.paused
    )
    SELECT *
      FROM judged
     WHERE monitor_id IN (SELECT monitor_id
                            FROM judged
                           WHERE pending_state IS NOT NULL OR verdict <> state OR tls_expiring)
     ORDER BY monitor_id, checked_at
"""

# A monitor's first state row; a sink that finds one already there lost the race.
FIRST_STATES = """
    INSERT INTO monitor_states (
           monitor_id, state, state_since, pending_state, pending_checks, pending_since,
           tls_warned_for
    )
    SELECT *
      FROM unnest(%(ids)b::uuid[], %(states)b::text[], %(state_sinces)b::timestamptz[],
                  %(pending_states)b::text[], %(pending_checks)b::integer[],
                  %(pending_sinces)b::timestamptz[], %(tls_warned_for)b::timestamptz[])
        ON CONFLICT (monitor_id) DO NOTHING
 RETURNING monitor_id
"""

FLIP_STATES = """
    UPDATE monitor_states AS m
       SET state = n.state,
           state_since = n.state_since,
           pending_state = n.pending_state,
           pending_checks = n.pending_checks,
           pending_since = n.pending_since,
           tls_warned_for = coalesce(n.tls_warned_for, m.tls_warned_for)
      FROM unnest(%(ids)b::uuid[], %(old_states)b::text[], %(old_pending_states)b::text[],
                  %(old_pending_checks)b::integer[], %(states)b::text[],
                  %(state_sinces)b::timestamptz[], %(pending_states)b::text[],
                  %(pending_checks)b::integer[], %(pending_sinces)b::timestamptz[],
                  %(tls_warned_for)b::timestamptz[])
           AS n(id, old_state, old_pending_state, old_pending_checks, state, state_since,
                pending_state, pending_checks, pending_since, tls_warned_for)
     WHERE m.monitor_id = n.id
       AND m.state = n.old_state
       AND m.pending_state IS NOT DISTINCT FROM n.old_pending_state
       AND m.pending_checks = n.old_pending_checks
 RETURNING m.monitor_id
"""

SELECT_OPEN_INCIDENTS = """
    SELECT id, monitor_id, state, cause, started_at, resolved_at
      FROM incidents
     WHERE monitor_id = ANY(%(ids)s)
       AND resolved_at IS NULL
"""

SELECT_CHANNELS_OF = """
    SELECT mc.monitor_id, c.id, c.name, c.kind, c.target
      FROM monitor_channels AS mc
      JOIN channels AS c ON c.id = mc.channel_id
     WHERE mc.monitor_id = ANY(%(ids)s)
     ORDER BY c.id
"""

RESOLVE_INCIDENTS = """
    UPDATE incidents
       SET resolved_at = resolved.at
      FROM unnest(%(ids)b::uuid[], %(resolved_at)b::timestamptz[]) AS resolved(id, at)
     WHERE incidents.id = resolved.id
"""

INSERT_INCIDENTS = """
    INSERT INTO incidents (id, monitor_id, state, cause, started_at, resolved_at)
    SELECT *
      FROM unnest(%(ids)b::uuid[], %(monitor_ids)b::uuid[], %(states)b::text[],
                  %(causes)b::text[], %(started_at)b::timestamptz[],
                  %(resolved_at)b::timestamptz[])
"""

INSERT_ALERTS = """
    INSERT INTO alerts (id, monitor_id, incident_id, check_id, type, from_state, to_state, held)
    SELECT *
      FROM unnest(%(ids)b::uuid[], %(monitor_ids)b::uuid[], %(incident_ids)b::uuid[],
                  %(check_ids)b::uuid[], %(types)b::text[], %(from_states)b::text[],
                  %(to_states)b::text[], %(held)b::boolean[])
"""


# The parameters of INSERT_ALERTS and the alert row key each is read from.
ALERT_COLUMNS = (
    ("ids", "id"),
    ("monitor_ids", "monitor_id"),
    ("incident_ids", "incident_id"),
    ("check_ids", "check_id"),
    ("types", "type"),
    ("from_states", "from_state"),
    ("to_states", "to_state"),
    ("held", "held"),
)


@dataclass
class _Event:
    """A transition or a certificate warning of one monitor, in check order."""

    kind: alerts.AlertType
    check: alerts.StoredCheck
    since: datetime  # when the run of checks that caused it began
    from_state: alerts.State
    to_state: alerts.State
    incident: alerts.Incident | None = None


@dataclass
class _MonitorRun:
    row: Row
    before: alerts.AlertState
    after: alerts.AlertState
    events: list[_Event]
    tls_warned_for: datetime | None


def _stored_check(row: Row) -> alerts.StoredCheck:
    return alerts.StoredCheck(
        check_id=row["check_id"],
        checked_at=row["checked_at"],
        verdict=row["verdict"],
        status_code=row["status_code"],
        response_time_ms=row["response_time_ms"],
        error=row["error"],
        tls_expires_at=row["tls_expires_at"],
    )


def _run_of(rows: list[Row]) -> _MonitorRun:
    """Move one monitor's state over its new checks, in order."""
    first = rows[0]
    before = alerts.AlertState(
        first["state"],
        first["state_since"],
        first["pending_state"],
        first["pending_checks"],
        first["pending_since"],
    )
    state, events, warned = before, [], None
    for row in rows:
        check = _stored_check(row)
        state, transition = alerts.advance(
            state,
            check,
            failure_threshold=first["failure_threshold"],
            success_threshold=first["success_threshold"],
        )
        if transition is not None:
            events.append(
                _Event(
                    alerts.alert_type(transition),
                    check,
                    transition.since,
                    transition.from_state,
                    transition.to_state,
                )
            )
        if row["tls_expiring"] and row["tls_expires_at"] != warned:
            warned = row["tls_expires_at"]
            kind: alerts.AlertType = "monitor.tls_expiring"
            events.append(_Event(kind, check, check.checked_at, state.state, state.state))
    return _MonitorRun(first, before, state, events, warned)


def _new_values(runs: list[_MonitorRun]) -> dict[str, list[Any]]:
    return {
        "ids": [run.row["monitor_id"] for run in runs],
        "states": [run.after.state for run in runs],
        "state_sinces": [run.after.state_since for run in runs],
        "pending_states": [run.after.pending_state for run in runs],
        "pending_checks": [run.after.pending_checks for run in runs],
        "pending_sinces": [run.after.pending_since for run in runs],
        "tls_warned_for": [run.tls_warned_for for run in runs],
    }


async def _flip(conn: Connection, runs: list[_MonitorRun]) -> set[uuid.UUID]:
    """Write the new states where they are still the ones read; the ids written."""
    first = [run for run in runs if not run.row["has_state"]]
    changed = [run for run in runs if run.row["has_state"]]
    won: set[uuid.UUID] = set()
    if first:
        cursor = await conn.execute(FIRST_STATES, _new_values(first))
        won |= {row["monitor_id"] for row in await cursor.fetchall()}
    if changed:
        cursor = await conn.execute(
            FLIP_STATES,
            {
                **_new_values(changed),
                "old_states": [run.before.state for run in changed],
                "old_pending_states": [run.before.pending_state for run in changed],
                "old_pending_checks": [run.before.pending_checks for run in changed],
            },
        )
        won |= {row["monitor_id"] for row in await cursor.fetchall()}
    return won


def _incidents_of(
    run: _MonitorRun, open_incident: alerts.Incident | None
) -> tuple[alerts.Incident | None, list[alerts.Incident]]:
    """Close and open the run's incidents in order: the open one it resolved (if any) and the
    ones it opened. Each event is given the incident it concerns."""
    current = open_incident
    resolved: alerts.Incident | None = None
    opened: list[alerts.Incident] = []
    for event in run.events:
        if event.kind == "monitor.tls_expiring":
            continue
        if current is not None:
            closed = replace(current, resolved_at=event.since)
            if current is open_incident:
                resolved = closed
            else:
                opened[opened.index(current)] = closed
            current = None
            event.incident = closed
        if event.to_state in ("down", "degraded"):
            current = alerts.Incident(
                id=uuid.uuid4(),
                monitor_id=run.row["monitor_id"],
                state="down" if event.to_state == "down" else "degraded",
                cause=alerts.cause_of(event.check, run.row["max_response_ms"]),
                started_at=event.since,
                resolved_at=None,
            )
            opened.append(current)
            event.incident = current
    return resolved, opened


@dataclass(frozen=True)
class Notification:
    """One alert for one channel."""

    alert_id: uuid.UUID
    channel: alerts.Channel
    kind: alerts.AlertType
    monitor: dict[str, Any]
    incident: alerts.Incident | None
    check: alerts.StoredCheck


def _delivery_of(notification: Notification) -> delivery.NewDelivery:
    channel = notification.channel
    return _channel_message(
        channel.kind,
        channel.target,
        text=alerts.notification_text(
            notification.kind, notification.monitor, notification.incident
        ),
        document=alerts.notification_body(
            notification.kind, notification.monitor, notification.incident, notification.check
        ),
        delivery_id=alerts.delivery_id(notification.alert_id, channel.id),
    )


async def _advance_alerts(conn: Connection) -> list[Notification]:
    """Move the alert state of the monitors of the checks just stored; record their incidents
    and alerts, and return the notifications to enqueue in the same transaction."""
    cursor = await conn.execute(JUDGE_STORED)
    rows = await cursor.fetchall()
    if not rows:
        return []
    runs = [
        _run_of(list(checks))
        for _, checks in itertools.groupby(rows, key=lambda row: row["monitor_id"])
    ]
    changed = [run for run in runs if run.after != run.before or run.tls_warned_for]
    if not changed:
        return []
    won = await _flip(conn, changed)
    runs = [run for run in changed if run.row["monitor_id"] in won and run.events]
    if not runs:
        return []
    ids = [run.row["monitor_id"] for run in runs]
    cursor = await conn.execute(SELECT_OPEN_INCIDENTS, {"ids": ids})
    open_incidents = {row["monitor_id"]: alerts.Incident(**row) for row in await cursor.fetchall()}
    cursor = await conn.execute(SELECT_CHANNELS_OF, {"ids": ids})
    channels: dict[uuid.UUID, list[alerts.Channel]] = {}
    for row in await cursor.fetchall():
        channels.setdefault(row.pop("monitor_id"), []).append(alerts.Channel(**row))
    times = [event.check.checked_at for run in runs for event in run.events]
    windows = await windows_of(conn, ids, min(times), max(times) + timedelta(microseconds=1))

    resolved_incidents: list[alerts.Incident] = []
    opened_incidents: list[alerts.Incident] = []
    alert_rows: list[dict[str, Any]] = []
    notifications: list[Notification] = []
    for run in runs:
        monitor_id = run.row["monitor_id"]
        resolved, opened = _incidents_of(run, open_incidents.get(monitor_id))
        resolved_incidents += [resolved] if resolved is not None else []
        opened_incidents += opened
        for event in run.events:
            held = maintenance.covers(windows, monitor_id, event.check.checked_at)
            alert = alerts.alert_id(event.check.check_id, event.kind)
            alert_rows.append(
                {
                    "id": alert,
                    "monitor_id": monitor_id,
                    "incident_id": None if event.incident is None else event.incident.id,
                    "check_id": event.check.check_id,
                    "type": event.kind,
                    "from_state": event.from_state,
                    "to_state": event.to_state,
                    "held": held,
                }
            )
            monitor = {
                "id": monitor_id,
                "name": run.row["name"],
                "url": run.row["url"],
                "state": event.to_state,
            }
            # An alert held by a maintenance window is recorded and sent nowhere.
            for channel in [] if held else channels.get(monitor_id, []):
                notifications.append(
                    Notification(alert, channel, event.kind, monitor, event.incident, event.check)
                )
    if resolved_incidents:
        await conn.execute(
            RESOLVE_INCIDENTS,
            {
                "ids": [incident.id for incident in resolved_incidents],
                "resolved_at": [incident.resolved_at for incident in resolved_incidents],
            },
        )
    if opened_incidents:
        await conn.execute(
            INSERT_INCIDENTS,
            {
                "ids": [incident.id for incident in opened_incidents],
                "monitor_ids": [incident.monitor_id for incident in opened_incidents],
                "states": [incident.state for incident in opened_incidents],
                "causes": [incident.cause for incident in opened_incidents],
                "started_at": [incident.started_at for incident in opened_incidents],
                "resolved_at": [incident.resolved_at for incident in opened_incidents],
            },
        )
    await conn.execute(
        INSERT_ALERTS, {column: [row[key] for row in alert_rows] for column, key in ALERT_COLUMNS}
    )
    return notifications


# --- Queries ------------------------------------------------------------------------------------

SELECT_RECENT_CHECKS = """
    SELECT check_id, checked_at, status_code, response_time_ms, dns_ms, connect_ms, tls_ms,
           first_byte_ms, up, regex_matched, error_kind, error, tls_expires_at
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


def rounded_ms(value: Any) -> float | None:
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
    return Uptime(
        int(row["checks"]), int(row["up"]), rounded_ms(row["p50_ms"]), rounded_ms(row["p95_ms"])
    )


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def uptime_from_rollups(
    pool: Pool, monitor_id: uuid.UUID, since: datetime, until: datetime
) -> Uptime:
    """Whole hours from the rollups and the partial hours at both ends from the raw checks:
    counts are exact, percentiles are read from the latency histogram."""
    first_hour = hour_floor(since)
    if first_hour < since:
        first_hour += timedelta(hours=1)
    last_hour = max(hour_floor(until), first_hour)
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
