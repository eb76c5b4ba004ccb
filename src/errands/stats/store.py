"""The stats tables: each process adds its minute totals, readers sum every process's rows."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from errands.core.resources import Resources

__all__ = [
    "MinuteTotals",
    "RouteTotals",
    "add_minutes",
    "expire_stats",
    "fold_old_minutes",
    "read_totals",
    "started_at",
]

Connection = AsyncConnection[dict[str, Any]]

# Any 64-bit constant unique to this use: one process at a time folds old rows.
FOLD_LOCK_KEY = 0x7374_6174_735F_666F


@dataclass(frozen=True)
class MinuteTotals:
    """What one process counted for one route in one minute."""

    method: str
    route: str
    minute: datetime
    count: int
    errors: int
    sum_ms: float
    histogram: list[int]


@dataclass(frozen=True)
class RouteTotals:
    method: str
    route: str
    count: int
    errors: int
    sum_ms: float
    histogram: list[int]


ADD_MINUTE = """
    INSERT INTO stats_buckets AS b
        (method, route, minute, process, count, errors, sum_ms, histogram)
    VALUES
        (%(method)s, %(route)s, %(minute)s, %(process)s,
         %(count)s, %(errors)s, %(sum_ms)s, %(histogram)s)
    ON CONFLICT (method, route, minute, process) DO UPDATE SET
        count = b.count + excluded.count,
        errors = b.errors + excluded.errors,
        sum_ms = b.sum_ms + excluded.sum_ms,
        histogram = ARRAY(
            SELECT coalesce(mine, 0) + coalesce(added, 0)
            FROM unnest(b.histogram, excluded.histogram) WITH ORDINALITY AS bins(mine, added, bin)
            ORDER BY bin
        )
"""


async def add_minutes(conn: Connection, process: str, minutes: list[MinuteTotals]) -> None:
    """Add one process's totals to its rows, all or nothing."""
    async with conn.transaction(), conn.cursor() as cursor:
        await cursor.executemany(
            ADD_MINUTE,
            [
                {
                    "method": totals.method,
                    "route": totals.route,
                    "minute": totals.minute,
                    "process": process,
                    "count": totals.count,
                    "errors": totals.errors,
                    "sum_ms": totals.sum_ms,
                    "histogram": totals.histogram,
                }
                for totals in minutes
            ],
        )


READ_TOTALS = """
    WITH picked AS (
        SELECT method, route, count, errors, sum_ms, histogram
        FROM stats_buckets
        WHERE %(since)s::timestamptz IS NULL OR minute >= %(since)s
    ),
    bins AS (
        SELECT p.method, p.route, h.bin, sum(h.n)::bigint AS n
        FROM picked AS p, unnest(p.histogram) WITH ORDINALITY AS h(n, bin)
        GROUP BY p.method, p.route, h.bin
    )
    SELECT
        t.method, t.route, t.count, t.errors, t.sum_ms,
        (SELECT array_agg(b.n ORDER BY b.bin) FROM bins AS b
         WHERE b.method = t.method AND b.route = t.route) AS histogram
    FROM (
        SELECT method, route,
               sum(count)::bigint AS count, sum(errors)::bigint AS errors,
               sum(sum_ms) AS sum_ms
        FROM picked
        GROUP BY method, route
    ) AS t
    ORDER BY t.route, t.method
"""


async def read_totals(conn: Connection, since: datetime | None) -> list[RouteTotals]:
    """Every process's counts per route, in minutes starting at `since` or later (all if None)."""
    cursor = await conn.execute(READ_TOTALS, {"since": since})
    return [
        RouteTotals(
            method=row["method"],
            route=row["route"],
            count=row["count"],
            errors=row["errors"],
            sum_ms=row["sum_ms"],
            histogram=list(row["histogram"] or []),
        )
        for row in await cursor.fetchall()
    ]


STARTED_AT = "SELECT min(started_at) AS started_at FROM stats_origin"


async def started_at(conn: Connection) -> datetime:
    """When this database began counting."""
    cursor = await conn.execute(STARTED_AT)
    row = await cursor.fetchone()
    assert row is not None
    found: datetime = row["started_at"]
    return found


FOLD_OLD_MINUTES = """
    WITH old AS (
        DELETE FROM stats_buckets
        WHERE minute < %(before)s AND process <> ''
        RETURNING method, route, date_trunc('day', minute, 'UTC') AS day,
                  count, errors, sum_ms, histogram
    ),
    totals AS (
        SELECT method, route, day,
               sum(count) AS count, sum(errors) AS errors, sum(sum_ms) AS sum_ms
        FROM old
        GROUP BY method, route, day
    ),
    bins AS (
        SELECT o.method, o.route, o.day, h.bin, sum(h.n) AS n
        FROM old AS o, unnest(o.histogram) WITH ORDINALITY AS h(n, bin)
        GROUP BY o.method, o.route, o.day, h.bin
    )
    INSERT INTO stats_buckets AS b
        (method, route, minute, process, count, errors, sum_ms, histogram)
    SELECT t.method, t.route, t.day, '', t.count, t.errors, t.sum_ms,
           coalesce(
               (SELECT array_agg(s.n ORDER BY s.bin) FROM bins AS s
                WHERE (s.method, s.route, s.day) = (t.method, t.route, t.day)),
               '{}'
           )
    FROM totals AS t
    ON CONFLICT (method, route, minute, process) DO UPDATE SET
        count = b.count + excluded.count,
        errors = b.errors + excluded.errors,
        sum_ms = b.sum_ms + excluded.sum_ms,
        histogram = ARRAY(
            SELECT coalesce(mine, 0) + coalesce(added, 0)
            FROM unnest(b.histogram, excluded.histogram) WITH ORDINALITY AS bins(mine, added, bin)
            ORDER BY bin
        )
"""


async def fold_old_minutes(conn: Connection, before: datetime) -> bool:
    """Fold minute rows older than `before` into one row per route and day. Returns False when
    another process is already folding (it will have done the same work)."""
    async with conn.transaction():
        cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS got", (FOLD_LOCK_KEY,))
        row = await cursor.fetchone()
        if row is None or not row["got"]:
            return False
        await conn.execute(FOLD_OLD_MINUTES, {"before": before})
    return True


EXPIRE_STATS = """
    DELETE FROM stats_buckets
     WHERE (method, route, minute, process) IN (
           SELECT method, route, minute, process
             FROM stats_buckets
            WHERE minute < now() - %(keep)s
            LIMIT %(limit)s
     )
"""


async def expire_stats(resources: Resources, limit: int) -> int:
    """Delete up to `limit` stats rows older than ERRANDS_STATS_RETENTION_DAYS."""
    keep = timedelta(days=resources.settings.stats_retention_days)
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(EXPIRE_STATS, {"keep": keep, "limit": limit})
        return cursor.rowcount
