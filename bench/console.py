"""Console: the monitors page and the status page with 1,000 monitors, beside the same figures
read through the JSON API.

    python bench/console.py [--database-url URL] [--monitors N] [--requests N]

Each monitor gets a day of checks half an hour apart and, before that, one check every twelve
hours for 29 days, all stored by the sink's own code, so its rollups are real (a monitor checked
every minute has more rollup rows over 30 days, 720 against 77 here; the page reads 30 checks
and the rollups of each of its 50 monitors). The app is served by uvicorn on
127.0.0.1; each page is fetched `--requests` times after one warm-up, and its time is from the
request sent to the last byte read. The peer is what a script without the console does to show
one page of 50 monitors: list them, then ask each one's 24-hour and 30-day uptime and its last
30 checks (151 requests).
"""

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import uvicorn
from psycopg.conninfo import make_conninfo

from errands.app import create_app
from errands.config import Settings
from errands.core.db import apply_migrations, start_embedded_postgres
from errands.core.resources import Resources, open_resources
from errands.monitors import store
from errands.monitors.results import CheckResult, encode_check
from errands.monitors.sink import store_batch

BATCH = 5000
PAGE_SIZE = 50
PORT = 18765


@dataclass
class Measure:
    name: str
    median_ms: float
    p95_ms: float
    size_bytes: int
    target: str


async def fresh_database(server_url: str) -> str:
    name = f"bench_console_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(server_url, dbname=name)
    await apply_migrations(url)
    return url


def result(monitor_id: uuid.UUID, at: datetime, n: int, latest: int, index: int) -> CheckResult:
    """Down now and then, and one monitor in ten down at its latest check."""
    down = n % 97 == 5 or (n == latest and index % 10 == 0)
    return CheckResult(
        check_id=uuid.uuid4(),
        monitor_id=monitor_id,
        checked_at=at,
        url="https://example.test/",
        status_code=503 if down else 200,
        response_time_ms=40.0 + (n * 7919) % 400,
        dns_ms=None,
        connect_ms=None,
        tls_ms=None,
        first_byte_ms=None,
        regex_matched=None,
        error_kind=None,
        error=None,
    )


async def fill(resources: Resources, monitors: int) -> list[uuid.UUID]:
    ids = []
    for n in range(monitors):
        fields = store.MonitorFields(
            url=f"https://site-{n:04d}.example/",
            interval_s=60,
            timeout_s=5,
            method="GET",
            regex=None,
            failure_threshold=1,
            public=True,
        )
        row = await store.create_monitor(resources.pool, fields)
        assert isinstance(row, dict)
        ids.append(row["id"])
    now = datetime.now(UTC)
    moments = [now - timedelta(minutes=m) for m in range(1, 24 * 60, 30)]
    moments += [now - timedelta(days=1, hours=h) for h in range(0, 29 * 24, 12)]
    moments.reverse()  # oldest first, as a checker sends them, so the alert state is the last
    batch: list[bytes] = []
    started = time.perf_counter()
    for n, at in enumerate(moments):
        for index, monitor_id in enumerate(ids):
            batch.append(encode_check(result(monitor_id, at, n, len(moments) - 1, index)))
            if len(batch) >= BATCH:
                await store_batch(resources, batch)
                batch = []
    if batch:
        await store_batch(resources, batch)
    rows = len(moments) * len(ids)
    print(f"stored {rows:,} checks in {time.perf_counter() - started:.0f} s")
    return ids


async def timed(client: httpx.AsyncClient, path: str, requests: int) -> tuple[list[float], int]:
    await client.get(path)
    times = []
    size = 0
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
        size = len(response.content)
    return times, size


async def through_the_api(client: httpx.AsyncClient) -> None:
    monitors = (await client.get("/monitors", params={"limit": PAGE_SIZE})).json()
    for monitor in monitors:
        for window in ("24h", "30d"):
            await client.get(f"/monitors/{monitor['id']}/uptime", params={"window": window})
        await client.get(f"/monitors/{monitor['id']}/checks", params={"limit": 30})


def summary(name: str, times: list[float], size: int, target: str) -> Measure:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Measure(name, statistics.median(times), p95, size, target)


async def run(args: argparse.Namespace) -> list[Measure]:
    with tempfile.TemporaryDirectory() as data_dir:
        server_url = args.database_url or start_embedded_postgres(Path(data_dir))
        settings = Settings(
            database_url=await fresh_database(server_url),
            data_dir=Path(data_dir),
            log_level="warning",
            status_cache_s=0,  # every /status request renders the page afresh
        )
        async with open_resources(settings) as resources:
            await fill(resources, args.monitors)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=PORT, log_config=None)
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()  # start-up failed: raise its error here
            await asyncio.sleep(0.05)
        try:
            return await measure_pages(args)
        finally:
            server.should_exit = True
            await serving


async def measure_pages(args: argparse.Namespace) -> list[Measure]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=60) as client:
        measures = []
        for name, path in [
            ("monitors page, first 50", "/console/monitors"),
            ("monitors page, last page", f"/console/monitors?page={args.monitors // 50}"),
            ("monitors page, search", "/console/monitors?q=site-09"),
            ("monitors page, down only", "/console/monitors?state=down"),
            ("status page, all 1,000 public", "/status"),
            ("monitor detail, 30 days", "/console/monitors/{first}?window=30d"),
        ]:
            if "{first}" in path:
                first = (await client.get("/monitors", params={"limit": 1})).json()[0]["id"]
                path = path.format(first=first)
            times, size = await timed(client, path, args.requests)
            measures.append(summary(name, times, size, "< 300 ms, < 300 KB"))
        peer_times = []
        for _ in range(max(3, args.requests // 5)):
            started = time.perf_counter()
            await through_the_api(client)
            peer_times.append((time.perf_counter() - started) * 1000)
        measures.append(
            summary("the same 50 through the JSON API (151 requests)", peer_times, 0, "peer")
        )
        return measures


def table(measures: list[Measure]) -> str:
    page = measures[0].median_ms
    lines = [
        "| page | median | p95 | size | target | vs. first page |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for measure in measures:
        size = f"{measure.size_bytes / 1024:,.1f} KB" if measure.size_bytes else ""
        lines.append(
            f"| {measure.name} | {measure.median_ms:,.1f} ms | {measure.p95_ms:,.1f} ms | "
            f"{size} | {measure.target} | {measure.median_ms / page:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an existing PostgreSQL (default: embedded)")
    parser.add_argument("--monitors", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20, help="timed fetches per page")
    print(table(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
