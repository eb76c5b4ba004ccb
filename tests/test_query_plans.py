"""The hot queries use their indexes: EXPLAIN against a migrated database holding enough rows
that the planner would rather scan a whole table if no index served the query."""

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from errands.core import claims
from errands.core.db import Pool
from errands.monitors import store as monitors_store
from errands.stats import store as stats_store
from errands.timers import store as timers_store

MONITORS_WITH_CHECKS = 100
DAYS_OF_CHECKS = 3

FILL = """
    INSERT INTO deliveries (id, source, url, status, scheduled_at, due_at, delivered_at)
    SELECT gen_random_uuid(), 'timer', 'https://hooks.example/' || n, 'delivered',
           now() - interval '1 day', NULL, now()
      FROM generate_series(1, 50000) AS n;
    INSERT INTO deliveries (id, source, url, scheduled_at, due_at)
    SELECT gen_random_uuid(), 'timer', 'https://hooks.example/p' || n,
           now() + n * interval '1 second', now() + n * interval '1 second'
      FROM generate_series(1, 5000) AS n;
    INSERT INTO timers (id, url, fire_at) SELECT id, url, scheduled_at FROM deliveries;

    INSERT INTO monitors (id, url, interval_s, timeout_s, due_at)
    SELECT gen_random_uuid(), 'https://site' || n || '.example/', 60, 10,
           now() + (n % 60) * interval '1 second'
      FROM generate_series(1, 20000) AS n;

    INSERT INTO uploads (id) SELECT gen_random_uuid() FROM generate_series(1, 5000);
    INSERT INTO upload_files (id, upload_id, position, filename, kind, size_bytes, original_key,
                              status, due_at)
    SELECT gen_random_uuid(), u.id, p, 'f.pdf', 'pdf', 1000, u.id || '/' || p,
           CASE WHEN p = 1 AND random() < 0.02 THEN 'queued' ELSE 'done' END,
           NULL
      FROM uploads AS u, generate_series(1, 10) AS p;
    UPDATE upload_files SET due_at = now() WHERE status = 'queued';

    INSERT INTO checks (monitor_id, check_id, checked_at, response_time_ms, status_code, up)
    SELECT m.id, gen_random_uuid(), %(first_day)s + s * interval '5 minutes', 100, 200, true
      FROM (SELECT id FROM monitors ORDER BY url LIMIT %(monitors)s) AS m,
           generate_series(0, %(slots)s - 1) AS s;

    INSERT INTO check_rollups (monitor_id, hour, checks, up, responses, sum_ms, min_ms, max_ms,
                               latency_histogram)
    SELECT m.id, date_trunc('hour', now()) - h * interval '1 hour', 60, 60, 60, 6000, 90, 110,
           ARRAY[0, 60, 0]
      FROM (SELECT id FROM monitors ORDER BY url LIMIT %(monitors)s) AS m,
           generate_series(0, 24 * 30) AS h;

    INSERT INTO stats_buckets (method, route, minute, process, count, errors, sum_ms, histogram)
    SELECT 'GET', '/route' || r, date_trunc('minute', now()) - m * interval '1 minute',
           'host:' || p, 10, 0, 50, ARRAY[10]
      FROM generate_series(1, 20) AS r, generate_series(0, 119) AS m, generate_series(1, 4) AS p;
    INSERT INTO stats_buckets (method, route, minute, process, count, errors, sum_ms, histogram)
    SELECT 'GET', '/route' || r, date_trunc('day', now()) - d * interval '1 day', '', 1000, 0,
           5000, ARRAY[1000]
      FROM generate_series(1, 20) AS r, generate_series(1, 365) AS d;
"""


@pytest.fixture
async def filled(pool: Pool, database_url: str) -> Pool:
    first_day = datetime.now(UTC).date() - timedelta(days=DAYS_OF_CHECKS - 1)
    days = {first_day + timedelta(days=n) for n in range(DAYS_OF_CHECKS)}
    await monitors_store.ensure_partitions(pool, days)
    params = {
        "first_day": datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC),
        "monitors": MONITORS_WITH_CHECKS,
        "slots": DAYS_OF_CHECKS * 288 - 12,
    }
    # Filling takes longer than the pool's deadline on a busy machine: a connection of its own.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for statement in FILL.split(";"):
            if statement.strip():
                await conn.execute(statement, params if "%(" in statement else None)  # type: ignore[arg-type]
        await conn.execute("ANALYZE")
    return pool


async def plan(pool: Pool, query: str | sql.Composable, params: dict[str, Any]) -> str:
    async with pool.connection() as conn:
        statement = sql.SQL("EXPLAIN {}").format(
            query if isinstance(query, sql.Composable) else sql.SQL(query)  # type: ignore[arg-type]
        )
        cursor = await conn.execute(statement, params)
        return "\n".join(row["QUERY PLAN"] for row in await cursor.fetchall())


async def some_id(pool: Pool, query: str) -> uuid.UUID:
    async with pool.connection() as conn:
        cursor = await conn.execute(query)  # type: ignore[arg-type]
        row = await cursor.fetchone()
    assert row is not None
    found: uuid.UUID = row["id"]
    return found


def claim_query(table: str) -> sql.Composed:
    return claims.ClaimQueue(table=table, channel=table, lease=timedelta(seconds=30))._query(
        claims.CLAIM_DUE
    )


def window(hours: int) -> dict[str, datetime]:
    until = datetime.now(UTC).replace(minute=30)
    return {"since": until - timedelta(hours=hours), "until": until}


async def hot_query_plans(pool: Pool) -> dict[str, str]:
    """The plan of every hot query, by name, with parameters as the features send them."""
    timer_id = await some_id(pool, "SELECT id FROM timers LIMIT 1")
    monitor_id = await some_id(pool, "SELECT monitor_id AS id FROM checks LIMIT 1")
    since, until = window(24 * 30).values()
    first_hour, last_hour = since.replace(minute=0) + timedelta(hours=1), until.replace(minute=0)
    claim = {
        "owner": "plan",
        "lease": timedelta(seconds=30),
        "limit": 100,
        "lookahead": timedelta(seconds=0.25),
    }
    return {
        "claim deliveries": await plan(pool, claim_query("deliveries"), claim),
        "claim monitors": await plan(pool, claim_query("monitors"), claim),
        "claim conversions": await plan(pool, claim_query("upload_files"), claim),
        "timer by id": await plan(pool, timers_store.GET_TIMER, {"id": timer_id}),
        "timers read together": await plan(
            pool, timers_store.GET_TIMERS, {"ids": [timer_id, *(uuid.uuid4() for _ in range(31))]}
        ),
        "checks of a monitor in a range": await plan(
            pool,
            monitors_store.SELECT_RECENT_CHECKS,
            {"monitor_id": monitor_id, **window(6), "limit": 100},
        ),
        "uptime from hourly rollups": await plan(
            pool,
            monitors_store.ROLLUP_UPTIME,
            {"monitor_id": monitor_id, "since": first_hour, "until": last_hour},
        ),
        "uptime edges from raw checks": await plan(
            pool,
            monitors_store.EDGE_CHECKS,
            {
                "monitor_id": monitor_id,
                "since": since,
                "first_hour": first_hour,
                "last_hour": last_hour,
                "until": until,
            },
        ),
        "stats of the last 5 minutes": await plan(
            pool, stats_store.READ_TOTALS, {"since": datetime.now(UTC) - timedelta(minutes=5)}
        ),
    }


# Due rows are found through the partial index, never by reading the table; joining them back
# by id is the planner's choice (a hash of a small table, the primary key of a big one).
EXPECTED_INDEX = {
    "claim deliveries": r"Index Scan using deliveries_due_at on deliveries deliveries_1",
    "claim monitors": r"Index Scan using monitors_due_at on monitors monitors_1",
    "claim conversions": r"Index Scan using upload_files_due on upload_files upload_files_1",
    "timer by id": r"Index Scan using timers_pkey on timers(.|\n)*deliveries_pkey|"
    r"Index Scan using deliveries_pkey on deliveries(.|\n)*timers_pkey",
    "timers read together": r"Index Scan (using timers_pkey on timers|on timers_pkey)"
    r"(.|\n)*deliveries_pkey|Index Scan using deliveries_pkey on deliveries(.|\n)*timers_pkey",
    "checks of a monitor in a range": r"Index Scan (using|on) checks_p\d{8}_pkey",
    "uptime from hourly rollups": r"Index Scan (using|on) check_rollups_pkey",
    "uptime edges from raw checks": r"Index Scan (using|on) checks_p\d{8}_pkey",
    "stats of the last 5 minutes": r"Index Scan (using|on) stats_buckets_minute",
}
# What must never appear: a read of the whole table the query looks into.
FORBIDDEN_SCAN = {
    "claim deliveries": "Seq Scan on deliveries deliveries_1",
    "claim monitors": "Seq Scan on monitors monitors_1",
    "claim conversions": "Seq Scan on upload_files upload_files_1",
}


async def test_every_hot_query_uses_its_index(filled: Pool) -> None:
    plans = await hot_query_plans(filled)

    assert set(plans) == set(EXPECTED_INDEX)
    for name, found in plans.items():
        assert re.search(EXPECTED_INDEX[name], found), f"{name}:\n{found}"
        forbidden = FORBIDDEN_SCAN.get(name, "Seq Scan")
        assert forbidden not in found, f"{name}:\n{found}"
