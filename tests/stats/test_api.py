"""GET /stats: counts and response times per route template, shared by every process through
PostgreSQL, without the operational probes."""

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from errands.config import Settings
from errands.core.db import Pool
from errands.stats.histogram import BIN_COUNT, bin_of
from errands.stats.store import MinuteTotals, add_minutes, fold_old_minutes, read_totals
from tests.fixtures.app import free_port, serve_app

FAST_FLUSH = {"stats_flush_interval_s": 0.1}


def by_route(entries: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(entry["method"], entry["route"]): entry for entry in entries}


async def stats_when(
    client: httpx.AsyncClient, done: Any, deadline_s: float = 10.0
) -> dict[str, Any]:
    """Poll GET /stats until `done(stats)` holds (other processes flush every few moments)."""
    give_up = time.monotonic() + deadline_s
    while True:
        stats: dict[str, Any] = (await client.get("/stats")).json()
        if done(stats) or time.monotonic() > give_up:
            return stats
        await asyncio.sleep(0.05)


async def test_counts_errors_and_times_per_route_template(settings: Settings) -> None:
    async with serve_app(settings) as app:
        api = app.client
        for _ in range(3):
            await api.post("/titles", json={"domains": []})  # 422
        for _ in range(2):
            await api.get(f"/timer/{uuid.uuid4()}")  # 404, one template for every id
        await api.get("/healthz")
        await api.get("/readyz")
        await api.get("/metrics")
        await api.get("/no/such/route")

        stats = (await api.get("/stats")).json()

    since_start = by_route(stats["since_start"])
    titles = since_start[("POST", "/titles")]
    assert (titles["count"], titles["errors"]) == (3, 3)
    assert 0 < titles["p50_ms"] <= titles["p95_ms"] <= titles["p99_ms"]
    assert titles["avg_ms"] > 0
    timers = [entry for key, entry in since_start.items() if key[1].startswith("/timer/{")]
    assert [(entry["count"], entry["errors"]) for entry in timers] == [(2, 2)]
    # The probes, the scrape and unknown paths are not API use; this GET /stats is not yet done.
    assert set(since_start) == {("POST", "/titles"), ("GET", timers[0]["route"])}
    assert by_route(stats["last_hour"]) == since_start
    assert datetime.fromisoformat(stats["started_at"]) <= datetime.now(UTC)


async def test_stats_reads_count_too_and_succeed(settings: Settings) -> None:
    async with serve_app(settings) as app:
        await app.client.get("/stats")
        stats = (await app.client.get("/stats")).json()

    entry = by_route(stats["since_start"])[("GET", "/stats")]
    assert (entry["count"], entry["errors"]) == (1, 0)


async def test_two_processes_report_the_sum_of_both(settings: Settings) -> None:
    fast = settings.model_copy(update=FAST_FLUSH)
    async with serve_app(fast) as first, serve_app(fast) as second:
        await asyncio.gather(
            *(first.client.post("/titles", json={"domains": []}) for _ in range(5)),
            *(second.client.post("/titles", json={"domains": []}) for _ in range(7)),
        )

        def both_flushed(stats: dict[str, Any]) -> bool:
            entry = by_route(stats["since_start"]).get(("POST", "/titles"))
            return entry is not None and entry["count"] == 12

        seen_by_first = await stats_when(first.client, both_flushed)
        seen_by_second = await stats_when(second.client, both_flushed)

    for stats in (seen_by_first, seen_by_second):
        entry = by_route(stats["since_start"])[("POST", "/titles")]
        assert (entry["count"], entry["errors"]) == (12, 12)
    async with await psycopg.AsyncConnection.connect(settings.database_url or "") as conn:
        cursor = await conn.execute(
            "SELECT count(DISTINCT process) FROM stats_buckets WHERE route = '/titles'"
        )
        assert await cursor.fetchone() == (2,)  # each process writes only its own rows


async def test_counts_are_flushed_at_shutdown(settings: Settings) -> None:
    slow = settings.model_copy(update={"stats_flush_interval_s": 60})
    async with serve_app(slow) as first:
        await first.client.get("/stats")  # flushes what came before it, then counts itself
        await first.client.post("/titles", json={"domains": []})
    async with serve_app(slow) as second:
        stats = (await second.client.get("/stats")).json()

    counted = by_route(stats["since_start"])
    assert counted[("GET", "/stats")]["count"] == 1
    assert counted[("POST", "/titles")]["count"] == 1


def totals(route: str, minute: datetime, durations: list[float]) -> MinuteTotals:
    histogram = [0] * BIN_COUNT
    for duration in durations:
        histogram[bin_of(duration)] += 1
    while histogram and histogram[-1] == 0:
        histogram.pop()
    return MinuteTotals("GET", route, minute, len(durations), 1, sum(durations), histogram)


async def test_old_minutes_fold_into_days_without_changing_totals(pool: Pool) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    old = now - timedelta(days=2)
    async with pool.connection() as conn:
        await add_minutes(conn, "p1", [totals("/a", old, [1, 2, 3]), totals("/a", now, [5])])
        await add_minutes(conn, "p2", [totals("/a", old + timedelta(minutes=1), [400, 500])])
        await add_minutes(conn, "p2", [totals("/a", old + timedelta(minutes=1), [600])])
        before = await read_totals(conn, None)

        assert await fold_old_minutes(conn, now - timedelta(hours=2))

        after = await read_totals(conn, None)
        conn.row_factory = dict_row  # type: ignore[assignment]
        cursor = await conn.execute("SELECT process, minute FROM stats_buckets ORDER BY minute")
        rows = await cursor.fetchall()
    assert after == before
    assert after[0].count == 7 and after[0].errors == 4
    assert [row["process"] for row in rows] == ["", "p1"]
    assert rows[0]["minute"] == old.replace(hour=0, minute=0)


async def test_last_hour_leaves_out_older_minutes(settings: Settings, pool: Pool) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    async with pool.connection() as conn:
        await add_minutes(conn, "earlier", [totals("/a", now - timedelta(minutes=90), [400])])
        await add_minutes(conn, "earlier", [totals("/a", now - timedelta(minutes=3), [10, 20])])

    async with serve_app(settings) as app:
        stats = (await app.client.get("/stats")).json()

    since_start = by_route(stats["since_start"])[("GET", "/a")]
    last_hour = by_route(stats["last_hour"])[("GET", "/a")]
    assert (since_start["count"], since_start["avg_ms"]) == (3, 143.33)
    assert (last_hour["count"], last_hour["avg_ms"]) == (2, 15.0)
    assert last_hour["p99_ms"] < 25 < 380 < since_start["p99_ms"]


def start_api(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_PORT": str(port),
        "ERRANDS_STATS_FLUSH_INTERVAL_S": "0.2",
        "ERRANDS_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "errands", "api"], env=env)


async def wait_ready(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        assert process.poll() is None, "errands api exited"
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("errands api did not become ready")


async def test_two_errands_api_processes_report_the_sum(database_url: str) -> None:
    ports = [free_port(), free_port()]
    processes = [start_api(database_url, port) for port in ports]
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") for port in ports]
    try:
        for client, process in zip(clients, processes, strict=True):
            await wait_ready(client, process)
        for count, client in zip((4, 6), clients, strict=True):
            for _ in range(count):
                assert (await client.post("/titles", json={"domains": []})).status_code == 422

        def summed(stats: dict[str, Any]) -> bool:
            entry = by_route(stats["since_start"]).get(("POST", "/titles"))
            return entry is not None and entry["count"] == 10

        stats = await stats_when(clients[0], summed)
    finally:
        for client in clients:
            await client.aclose()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

    entry = by_route(stats["since_start"])[("POST", "/titles")]
    assert (entry["count"], entry["errors"]) == (10, 10)
