"""The SQL behind the console and the status page: many monitors at once, each summed up by its
state, its last check, its recent beats and its uptime per hour and per day."""

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from errands.core.db import Pool
from errands.monitors.results import percentile_from_histogram
from errands.monitors.store import day_start, hour_floor, rounded_ms

__all__ = [
    "Beat",
    "DailyUptime",
    "HourlyPoint",
    "MonitorPage",
    "MonitorSummary",
    "PublicMonitor",
    "RecentFigures",
    "RecentIncident",
    "count_monitor_states",
    "daily_uptime",
    "hourly_points",
    "monitor_page",
    "public_monitors",
    "recent_beats",
    "recent_figures",
    "recent_incidents",
]


@dataclass(frozen=True)
class MonitorSummary:
    """A monitor with its alert state and its last check (None until one is stored)."""

    id: uuid.UUID
    name: str
    url: str
    method: str
    interval_s: int
    state: str
    paused: bool
    public: bool
    created_at: datetime
    last_checked_at: datetime | None
    last_response_ms: float | None


@dataclass(frozen=True)
class MonitorPage:
    total: int  # monitors matching the search and state, on every page
    monitors: list[MonitorSummary]


@dataclass(frozen=True)
class RecentFigures:
    """From the hourly rollups: the last 24 hours and the last 30 days (whole hours)."""

    uptime_24h_pct: float | None
    uptime_30d_pct: float | None
    p95_24h_ms: float | None


@dataclass(frozen=True)
class Beat:
    checked_at: datetime
    up: bool
    response_time_ms: float | None


@dataclass(frozen=True)
class HourlyPoint:
    hour: datetime
    checks: int
    up: int
    avg_ms: float | None


@dataclass(frozen=True)
class DailyUptime:
    day: date
    checks: int
    up: int


# A monitor's last check is looked for this far back: the longest interval, and a day more.
LAST_CHECK_LOOKBACK = timedelta(days=8)

# Each page's monitors get their last check by one backwards index scan of the primary key
# each; the search matches the name or the URL, the state filter is the alert state, or
# "paused".
SELECT_MONITOR_PAGE = """
    SELECT m.id, m.name, m.url, m.method, m.interval_s, m.state, m.paused, m.public,
           m.created_at,
           last.checked_at AS last_checked_at,
           last.response_time_ms AS last_response_ms,
           m.total
      FROM (SELECT *, count(*) OVER () AS total
              FROM (SELECT id, url, method, interval_s, coalesce(st.state, 'new') AS state,
                           paused, public, created_at,
                           monitor_display_name(name, url) AS name
                      FROM monitors
                      LEFT JOIN monitor_states AS st ON st.monitor_id = monitors.id) AS named
             WHERE (%(search)s::text IS NULL
                    OR strpos(lower(name), lower(%(search)s)) > 0
                    OR strpos(lower(url), lower(%(search)s)) > 0)
               AND (%(state)s::text IS NULL
                    OR (%(state)s = 'paused' AND paused)
                    OR (state = %(state)s AND NOT paused))
             ORDER BY name, url, id
             LIMIT %(limit)s
            OFFSET %(offset)s
           ) AS m
      LEFT JOIN LATERAL (
               SELECT c.checked_at, c.response_time_ms
                 FROM checks AS c
                WHERE c.monitor_id = m.id
                  AND c.checked_at >= %(since)s
                ORDER BY c.checked_at DESC
                LIMIT 1
           ) AS last ON true
     ORDER BY m.name, m.url, m.id
"""

COUNT_MONITOR_STATES = """
    SELECT count(*) FILTER (WHERE state = 'up' AND NOT paused) AS up,
           count(*) FILTER (WHERE state = 'degraded' AND NOT paused) AS degraded,
           count(*) FILTER (WHERE state = 'down' AND NOT paused) AS down,
           count(*) FILTER (WHERE state = 'new' AND NOT paused) AS new,
           count(*) FILTER (WHERE paused) AS paused
      FROM (SELECT coalesce(st.state, 'new') AS state, paused
              FROM monitors
              LEFT JOIN monitor_states AS st ON st.monitor_id = monitors.id) AS states
"""

# The status page's only view of monitors: those marked public, by name and state alone (never
# their URL, which may carry a token).
SELECT_PUBLIC_MONITORS = """
    SELECT id,
           monitor_display_name(name, url) AS name,
           CASE WHEN paused THEN 'paused' ELSE coalesce(st.state, 'new') END AS state,
           st.state_since
      FROM monitors
      LEFT JOIN monitor_states AS st ON st.monitor_id = monitors.id
     WHERE public
     ORDER BY 2, id
"""

SELECT_RECENT_INCIDENTS = """
    SELECT i.monitor_id, i.state, i.cause, i.started_at, i.resolved_at
      FROM incidents AS i
     WHERE i.monitor_id = ANY(%(ids)b::uuid[])
       AND (i.resolved_at IS NULL OR i.resolved_at >= %(since)s)
     ORDER BY i.started_at DESC
     LIMIT %(limit)s
"""

SELECT_BEATS = """
    SELECT ids.id AS monitor_id, beat.checked_at, beat.up, beat.response_time_ms
      FROM unnest(%(ids)b::uuid[]) AS ids(id)
      JOIN LATERAL (
               SELECT c.checked_at, c.up, c.response_time_ms
                 FROM checks AS c
                WHERE c.monitor_id = ids.id
                  AND c.checked_at >= %(since)s
                ORDER BY c.checked_at DESC
                LIMIT %(count)s
           ) AS beat ON true
     ORDER BY ids.id, beat.checked_at
"""

SELECT_RECENT_FIGURES = """
    SELECT r.monitor_id,
           sum(r.checks) AS checks_30d,
           sum(r.up) AS up_30d,
           sum(r.checks) FILTER (WHERE r.hour >= %(day_ago)s) AS checks_24h,
           sum(r.up) FILTER (WHERE r.hour >= %(day_ago)s) AS up_24h,
           min(r.min_ms) FILTER (WHERE r.hour >= %(day_ago)s) AS min_ms_24h,
           max(r.max_ms) FILTER (WHERE r.hour >= %(day_ago)s) AS max_ms_24h,
           (SELECT array_agg(total ORDER BY position)
              FROM (SELECT position, sum(n)::integer AS total
                      FROM check_rollups AS h,
                           unnest(h.latency_histogram) WITH ORDINALITY AS bucket(n, position)
                     WHERE h.monitor_id = r.monitor_id
                       AND h.hour >= %(day_ago)s
                     GROUP BY position) AS summed
           ) AS histogram_24h
      FROM check_rollups AS r
     WHERE r.monitor_id = ANY(%(ids)b::uuid[])
       AND r.hour >= %(month_ago)s
     GROUP BY r.monitor_id
"""

SELECT_HOURLY = """
    SELECT hour, checks, up,
           CASE WHEN responses > 0 THEN sum_ms / responses END AS avg_ms
      FROM check_rollups
     WHERE monitor_id = %(monitor_id)s
       AND hour >= %(since)s
     ORDER BY hour
"""

SELECT_DAILY_UPTIME = """
    SELECT monitor_id,
           (hour AT TIME ZONE 'UTC')::date AS day,
           sum(checks)::integer AS checks,
           sum(up)::integer AS up
      FROM check_rollups
     WHERE monitor_id = ANY(%(ids)b::uuid[])
       AND hour >= %(since)s
     GROUP BY monitor_id, day
     ORDER BY monitor_id, day
"""


def _pct(up: Any, checks: Any) -> float | None:
    return None if not checks else round(100.0 * float(up) / float(checks), 3)


async def monitor_page(
    pool: Pool, *, search: str | None, state: str | None, limit: int, offset: int
) -> MonitorPage:
    """Monitors ordered by name, each with its last check; `search` matches part of the name
    or URL in any case; `state` is an alert state ("new", "up", "degraded", "down": paused ones
    left out), "paused", or None for all."""
    since = datetime.now(UTC) - LAST_CHECK_LOOKBACK
    params = {"search": search, "state": state, "limit": limit, "offset": offset, "since": since}
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_MONITOR_PAGE, params)
        rows = await cursor.fetchall()
    total = int(rows[0]["total"]) if rows else 0
    if not rows and offset > 0:  # past the last page: count what there is
        async with pool.connection() as conn:
            cursor = await conn.execute(SELECT_MONITOR_PAGE, {**params, "limit": 1, "offset": 0})
            first = await cursor.fetchone()
        total = 0 if first is None else int(first["total"])
    monitors = [
        MonitorSummary(**{name: row[name] for name in MonitorSummary.__dataclass_fields__})
        for row in rows
    ]
    return MonitorPage(total=total, monitors=monitors)


async def count_monitor_states(pool: Pool) -> dict[str, int]:
    """How many monitors are in each alert state, and how many are paused."""
    async with pool.connection() as conn:
        cursor = await conn.execute(COUNT_MONITOR_STATES)
        row = await cursor.fetchone()
    assert row is not None  # an aggregate always returns one row
    return {state: int(count) for state, count in row.items()}


@dataclass(frozen=True)
class PublicMonitor:
    id: uuid.UUID
    name: str
    state: str  # an alert state, or "paused"
    state_since: datetime | None


@dataclass(frozen=True)
class RecentIncident:
    monitor_id: uuid.UUID
    state: str
    cause: str
    started_at: datetime
    resolved_at: datetime | None


async def public_monitors(pool: Pool) -> list[PublicMonitor]:
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_PUBLIC_MONITORS)
        return [PublicMonitor(**row) for row in await cursor.fetchall()]


async def recent_incidents(
    pool: Pool, monitor_ids: list[uuid.UUID], since: datetime, limit: int
) -> list[RecentIncident]:
    """The monitors' incidents still open or resolved since `since`, newest first."""
    params = {"ids": monitor_ids, "since": since, "limit": limit}
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_RECENT_INCIDENTS, params)
        return [RecentIncident(**row) for row in await cursor.fetchall()]


async def recent_beats(
    pool: Pool, monitor_ids: list[uuid.UUID], count: int
) -> dict[uuid.UUID, list[Beat]]:
    """The last `count` checks of each monitor of the last day, oldest first."""
    params = {"ids": monitor_ids, "count": count, "since": datetime.now(UTC) - timedelta(days=1)}
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_BEATS, params)
        rows = await cursor.fetchall()
    beats: dict[uuid.UUID, list[Beat]] = {monitor_id: [] for monitor_id in monitor_ids}
    for row in rows:
        beats[row["monitor_id"]].append(
            Beat(row["checked_at"], row["up"], rounded_ms(row["response_time_ms"]))
        )
    return beats


async def recent_figures(
    pool: Pool, monitor_ids: list[uuid.UUID]
) -> dict[uuid.UUID, RecentFigures]:
    """Uptime over 24 hours and 30 days and the 24-hour p95 of each monitor, from its rollups
    (the current hour included); a monitor without checks gets None figures."""
    this_hour = hour_floor(datetime.now(UTC))
    params = {
        "ids": monitor_ids,
        "day_ago": this_hour - timedelta(hours=23),
        "month_ago": this_hour - timedelta(days=30) + timedelta(hours=1),
    }
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_RECENT_FIGURES, params)
        rows = {row["monitor_id"]: row for row in await cursor.fetchall()}
    figures = {}
    for monitor_id in monitor_ids:
        row = rows.get(monitor_id)
        if row is None:
            figures[monitor_id] = RecentFigures(None, None, None)
            continue
        histogram = row["histogram_24h"]
        p95 = (
            None
            if histogram is None
            else percentile_from_histogram(
                list(histogram), 0.95, row["min_ms_24h"], row["max_ms_24h"]
            )
        )
        figures[monitor_id] = RecentFigures(
            uptime_24h_pct=_pct(row["up_24h"], row["checks_24h"]),
            uptime_30d_pct=_pct(row["up_30d"], row["checks_30d"]),
            p95_24h_ms=p95,
        )
    return figures


async def hourly_points(pool: Pool, monitor_id: uuid.UUID, since: datetime) -> list[HourlyPoint]:
    """The monitor's hourly rollups from `since` on, oldest first."""
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_HOURLY, {"monitor_id": monitor_id, "since": since})
        rows = await cursor.fetchall()
    return [
        HourlyPoint(row["hour"], int(row["checks"]), int(row["up"]), rounded_ms(row["avg_ms"]))
        for row in rows
    ]


async def daily_uptime(
    pool: Pool, monitor_ids: list[uuid.UUID], since: date
) -> dict[uuid.UUID, list[DailyUptime]]:
    """Checks and up checks per UTC day from `since` on, per monitor; days without checks are
    left out."""
    params = {"ids": monitor_ids, "since": day_start(since)}
    async with pool.connection() as conn:
        cursor = await conn.execute(SELECT_DAILY_UPTIME, params)
        rows = await cursor.fetchall()
    days: dict[uuid.UUID, list[DailyUptime]] = {monitor_id: [] for monitor_id in monitor_ids}
    for row in rows:
        days[row["monitor_id"]].append(DailyUptime(row["day"], row["checks"], row["up"]))
    return days
