"""Timers: creation and firing throughput and lateness, Errands beside Procrastinate (on the
same PostgreSQL), APScheduler 3 and Celery.

    python bench/timers.py [--database-url URL] [--create N] [--burst N] [--rate R] [--seconds S]

Every system posts `{"id": ...}` to the same receiver, a separate process that notes when each
webhook arrived. Creation is timed through each system's own front door: Errands' HTTP API (an
`errands api` process), Procrastinate's `defer_async` with `schedule_at`, APScheduler's `add_job`,
Celery's `apply_async(eta=...)`. Firing is timed
twice: a burst of timers all due at one instant (webhooks per second until the last arrives) and a
steady stream at R per second (lateness = arrival minus due time, p50 and p99).
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import requests
from aiohttp import web
from celery import Celery
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT_POSTS = 64


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- the receiver: its own process, so its work is not charged to the system under test -------


def run_receiver(port: int) -> None:
    arrivals: dict[str, list[float]] = {}

    async def hook(request: web.Request) -> web.Response:
        payload = await request.json()
        arrivals.setdefault(payload["id"], []).append(time.time())
        return web.Response(text="ok")

    async def dump(_request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def reset(_request: web.Request) -> web.Response:
        arrivals.clear()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/arrivals", dump)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "receiver", str(self.port)], stderr=subprocess.DEVNULL
        )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        await wait_for_http(session, f"http://127.0.0.1:{self.port}/arrivals")

    async def reset(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"http://127.0.0.1:{self.port}/reset") as response:
            response.raise_for_status()

    async def arrivals(self, session: aiohttp.ClientSession) -> dict[str, list[float]]:
        async with session.get(f"http://127.0.0.1:{self.port}/arrivals") as response:
            result: dict[str, list[float]] = await response.json()
            return result

    async def wait_for(
        self, session: aiohttp.ClientSession, ids: set[str], timeout_s: float
    ) -> dict[str, list[float]]:
        deadline = time.monotonic() + timeout_s
        while True:
            arrivals = await self.arrivals(session)
            if ids <= arrivals.keys() or time.monotonic() > deadline:
                return arrivals
            await asyncio.sleep(0.2)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


async def wait_for_http(session: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s} s")
        await asyncio.sleep(0.1)


# --- results ----------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    create_per_s: float | None = None
    burst_per_s: float | None = None
    lateness_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float | None:
        if not self.lateness_ms:
            return None
        ordered = sorted(self.lateness_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def burst_rate(arrivals: dict[str, list[float]], due: dict[str, float], name: str) -> float:
    missing = due.keys() - arrivals.keys()
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} of {len(due)} burst timers never arrived")
    last = max(times[0] for timer_id, times in arrivals.items() if timer_id in due)
    return len(due) / max(last - min(due.values()), 1e-9)


def lateness_ms(arrivals: dict[str, list[float]], due: dict[str, float], name: str) -> list[float]:
    missing = due.keys() - arrivals.keys()
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} of {len(due)} steady timers never arrived")
    return [(arrivals[timer_id][0] - at) * 1000 for timer_id, at in due.items()]


def steady_schedule(start: float, rate: float, seconds: float) -> list[float]:
    return [start + i / rate for i in range(int(rate * seconds))]


# --- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """The given server, or an embedded one in a temporary directory."""
    if url:
        yield url
        return
    from errands.core.db import start_embedded_postgres

    with tempfile.TemporaryDirectory(prefix="errands-bench-") as data_dir:
        yield start_embedded_postgres(Path(data_dir))


def fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return make_conninfo(server_url, dbname=name)


# --- Errands ----------------------------------------------------------------------------------

# What POST /timer writes, for many timers at once: the timer and its webhook's delivery.
ADD_TIMERS = """
    WITH due AS (
        SELECT gen_random_uuid() AS id, to_timestamp(at) AS fire_at
          FROM unnest(%(at)s::float8[]) AS at
    ), timers_added AS (
        INSERT INTO timers (id, url, fire_at)
        SELECT id, %(url)s, fire_at FROM due
    ), deliveries_added AS (
        INSERT INTO deliveries (id, source, url, headers, body, scheduled_at, due_at)
        SELECT id, 'timer', %(url)s, '{"Content-Type": "application/json"}',
               convert_to(json_build_object('id', id::text)::text, 'UTF8'), fire_at, fire_at
          FROM due
    )
    SELECT id::text, extract(epoch FROM fire_at)::float8 AS at FROM due
"""


def errands_process(
    role: list[str], database_url: str, **settings: object
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
        "ERRANDS_LOG_LEVEL": "warning",
        **{f"ERRANDS_{name.upper()}": str(value) for name, value in settings.items()},
    }
    return subprocess.Popen([sys.executable, "-m", "errands", *role], env=env)


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def post_timers(session: aiohttp.ClientSession, url: str, count: int, hook: str) -> float:
    """POST `count` timers with CONCURRENT_POSTS in flight; return timers per second."""
    body = {"hours": 1, "url": hook}
    remaining = iter(range(count))

    async def poster() -> None:
        for _ in remaining:
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"POST /timer answered {response.status}")
                await response.read()

    started = time.perf_counter()
    await asyncio.gather(*(poster() for _ in range(CONCURRENT_POSTS)))
    return count / (time.perf_counter() - started)


async def add_errands_timers(database_url: str, hook: str, at: list[float]) -> dict[str, float]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(ADD_TIMERS, {"url": hook, "at": at})
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def bench_errands(server_url: str, receiver: Receiver, args: argparse.Namespace) -> Result:
    result = Result("Errands")
    database_url = fresh_database(server_url, "bench_errands")
    port = free_port()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENT_POSTS)
    ) as session:
        with running(errands_process(["api"], database_url, port=port, db_pool_max=20)):
            await wait_for_http(session, f"http://127.0.0.1:{port}/readyz")
            await post_timers(session, f"http://127.0.0.1:{port}/timer", 200, receiver.url)
            result.create_per_s = await post_timers(
                session, f"http://127.0.0.1:{port}/timer", args.create, receiver.url
            )
        with running(errands_process(["worker", "--only", "timers"], database_url)):
            await wait_for_listener(database_url)
            due = await add_errands_timers(
                database_url, receiver.url, [time.time() + 1.0] * args.burst
            )
            arrivals = await receiver.wait_for(session, set(due), timeout_s=60)
            result.burst_per_s = burst_rate(arrivals, due, "Errands")
            await receiver.reset(session)
            at = steady_schedule(time.time() + 1.0, args.rate, args.seconds)
            due = await add_errands_timers(database_url, receiver.url, at)
            arrivals = await receiver.wait_for(session, set(due), timeout_s=args.seconds + 30)
            result.lateness_ms = lateness_ms(arrivals, due, "Errands")
            await receiver.reset(session)
    return result


async def wait_for_listener(database_url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the Errands firer did not start")


# --- APScheduler 3: AsyncIOScheduler with its SQLAlchemy job store on the same PostgreSQL ------

_webhook_session: aiohttp.ClientSession | None = None


async def post_webhook(url: str, timer_id: str) -> None:
    """The APScheduler job: the same webhook Errands sends."""
    assert _webhook_session is not None
    headers = {"Idempotency-Key": timer_id}
    async with _webhook_session.post(url, json={"id": timer_id}, headers=headers) as response:
        await response.read()


async def bench_apscheduler(
    server_url: str, receiver: Receiver, args: argparse.Namespace
) -> Result:
    global _webhook_session
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from sqlalchemy import URL

    result = Result("APScheduler 3")
    database_url = fresh_database(server_url, "bench_apscheduler")
    # Every libpq parameter (a socket directory as host included) passes through as a query.
    parts = {key: str(value) for key, value in conninfo_to_dict(database_url).items()}
    sqlalchemy_url = URL.create("postgresql+psycopg", database=parts.pop("dbname"), query=parts)
    scheduler = AsyncIOScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=sqlalchemy_url)},
        job_defaults={"misfire_grace_time": None},
        timezone=UTC,
    )
    count = args.create // 5  # one INSERT and commit per add_job: fewer, or the bench takes ages
    async with aiohttp.ClientSession() as session:
        _webhook_session = session
        scheduler.start()
        try:
            later = datetime.now(UTC) + timedelta(hours=1)
            started = time.perf_counter()
            for _ in range(count):
                timer_id = str(uuid.uuid4())
                scheduler.add_job(
                    post_webhook, "date", run_date=later, args=[receiver.url, timer_id], id=timer_id
                )
            result.create_per_s = count / (time.perf_counter() - started)
            scheduler.remove_all_jobs()

            burst = args.burst // 5
            burst_at = time.time() + burst / result.create_per_s * 1.5 + 1.0
            due = add_apscheduler_jobs(scheduler, receiver.url, [burst_at] * burst)
            arrivals = await receiver.wait_for(session, set(due), timeout_s=120)
            result.burst_per_s = burst_rate(arrivals, due, "APScheduler")
            result.notes.append(f"burst of {burst}")
            await receiver.reset(session)

            # The steady stream must be in the store before it starts: add it, then let it run.
            schedule = steady_schedule(0, args.rate, args.seconds)
            lead_s = len(schedule) / result.create_per_s * 1.5 + 1.0
            at = [time.time() + lead_s + offset for offset in schedule]
            due = add_apscheduler_jobs(scheduler, receiver.url, at)
            arrivals = await receiver.wait_for(
                session, set(due), timeout_s=args.seconds + lead_s + 60
            )
            result.lateness_ms = lateness_ms(arrivals, due, "APScheduler")
            await receiver.reset(session)
        finally:
            scheduler.shutdown(wait=False)
            _webhook_session = None
    return result


def add_apscheduler_jobs(scheduler: Any, hook: str, at: list[float]) -> dict[str, float]:
    due = {}
    for when in at:
        timer_id = str(uuid.uuid4())
        run_date = datetime.fromtimestamp(when, UTC)
        scheduler.add_job(
            post_webhook, "date", run_date=run_date, args=[hook, timer_id], id=timer_id
        )
        due[timer_id] = when
    return due


# --- Procrastinate: a PostgreSQL job queue, jobs deferred with schedule_at -------------------

# Scheduled jobs are found by polling (LISTEN/NOTIFY wakes only for jobs due now), so the poll
# is set well below its 5 s default; 64 jobs at once, as many as Errands' posting clients.
PROCRASTINATE_POLL_S = 0.05
PROCRASTINATE_CONCURRENCY = 64


async def bench_procrastinate(
    server_url: str, receiver: Receiver, args: argparse.Namespace
) -> Result:
    global _webhook_session
    import procrastinate

    result = Result("Procrastinate")
    database_url = fresh_database(server_url, "bench_procrastinate")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=database_url))

    @app.task(name="fire_webhook")
    async def fire(url: str, timer_id: str) -> None:
        assert _webhook_session is not None
        headers = {"Idempotency-Key": timer_id}
        async with _webhook_session.post(url, json={"id": timer_id}, headers=headers) as response:
            await response.read()

    async def defer_all(hook: str, at: list[float]) -> dict[str, float]:
        due = {str(uuid.uuid4()): when for when in at}
        for timer_id, when in due.items():
            await fire.configure(schedule_at=datetime.fromtimestamp(when, UTC)).defer_async(
                url=hook, timer_id=timer_id
            )
        return due

    async with app.open_async(), aiohttp.ClientSession() as session:
        _webhook_session = session
        await app.schema_manager.apply_schema_async()
        try:
            count = args.create // 5  # one INSERT and commit per defer, as APScheduler
            started = time.perf_counter()
            await defer_all(receiver.url, [time.time() + 3600] * count)
            result.create_per_s = count / (time.perf_counter() - started)
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute("DELETE FROM procrastinate_jobs")

            worker = asyncio.create_task(
                app.run_worker_async(
                    concurrency=PROCRASTINATE_CONCURRENCY,
                    fetch_job_polling_interval=PROCRASTINATE_POLL_S,
                    install_signal_handlers=False,
                    delete_jobs="successful",
                )
            )
            burst = args.burst // 5
            burst_at = time.time() + burst / result.create_per_s * 1.5 + 1.0
            due = await defer_all(receiver.url, [burst_at] * burst)
            arrivals = await receiver.wait_for(session, set(due), timeout_s=120)
            result.burst_per_s = burst_rate(arrivals, due, "Procrastinate")
            result.notes.append(f"burst of {burst}")
            await receiver.reset(session)

            schedule = steady_schedule(0, args.rate, args.seconds)
            lead_s = len(schedule) / result.create_per_s * 1.5 + 1.0
            due = await defer_all(receiver.url, [time.time() + lead_s + at for at in schedule])
            arrivals = await receiver.wait_for(
                session, set(due), timeout_s=args.seconds + lead_s + 60
            )
            result.lateness_ms = lateness_ms(arrivals, due, "Procrastinate")
            await receiver.reset(session)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        finally:
            _webhook_session = None
    return result


# --- Celery: ETA tasks on Redis, a threads-pool worker ----------------------------------------

# The worker process imports this file as the module `timers` and finds the broker in its
# environment; the bench process sets the broker once its Redis is up.
celery_app = Celery("timers", broker=os.environ.get("BENCH_REDIS_URL"))
celery_app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
_celery_http = threading.local()


@celery_app.task(name="fire_webhook")  # type: ignore[untyped-decorator]
def fire_webhook(url: str, timer_id: str) -> None:
    """The Celery task: the same webhook Errands sends, over a session per worker thread."""
    if not hasattr(_celery_http, "session"):
        _celery_http.session = requests.Session()
    _celery_http.session.post(url, json={"id": timer_id}, headers={"Idempotency-Key": timer_id})


def ensure_redis() -> str | None:
    """The redis-server binary, installed from Debian when missing; None when that fails."""
    found = shutil.which("redis-server")
    if found:
        return found
    print("redis-server not found: installing it with apt-get ...", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    installed = subprocess.run(["apt-get", "install", "-y", "redis-server"], check=False, **quiet)
    if installed.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, **quiet)
        subprocess.run(["apt-get", "install", "-y", "redis-server"], check=False, **quiet)
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


def celery_worker(redis_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT / "bench")}
    command = [sys.executable, "-m", "celery", "-A", "timers:celery_app", "worker"]
    options = ["-P", "threads", "-c", "32", "--loglevel", "WARNING"]
    flags = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(
        [*command, *options, *flags], env=env, cwd=ROOT / "bench", stdout=subprocess.DEVNULL
    )


def send_celery_tasks(hook: str, at: list[float]) -> dict[str, float]:
    due = {}
    for when in at:
        timer_id = str(uuid.uuid4())
        fire_webhook.apply_async(args=[hook, timer_id], eta=datetime.fromtimestamp(when, UTC))
        due[timer_id] = when
    return due


async def bench_celery(redis_url: str, receiver: Receiver, args: argparse.Namespace) -> Result:
    result = Result("Celery ETA")
    later = time.time() + 3600
    started = time.perf_counter()
    send_celery_tasks(receiver.url, [later] * args.create)
    result.create_per_s = args.create / (time.perf_counter() - started)
    celery_app.control.purge()
    with running(celery_worker(redis_url)):
        async with aiohttp.ClientSession() as session:
            # Warm-up: one task whose arrival shows the worker is consuming.
            due = send_celery_tasks(receiver.url, [time.time()])
            await receiver.wait_for(session, set(due), timeout_s=60)
            await receiver.reset(session)

            burst_at = time.time() + args.burst / result.create_per_s * 1.5 + 1.0
            due = send_celery_tasks(receiver.url, [burst_at] * args.burst)
            arrivals = await receiver.wait_for(session, set(due), timeout_s=120)
            result.burst_per_s = burst_rate(arrivals, due, "Celery")
            await receiver.reset(session)

            at = steady_schedule(time.time() + 1.0, args.rate, args.seconds)
            due = send_celery_tasks(receiver.url, at)
            arrivals = await receiver.wait_for(session, set(due), timeout_s=args.seconds + 60)
            result.lateness_ms = lateness_ms(arrivals, due, "Celery")
            await receiver.reset(session)
    return result


# --- the table --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    value = ours / theirs if higher_is_better else theirs / ours
    return f"{value:.1f}x"


def table(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"| system | timers created/s | webhooks/s (burst) | lateness p50 ms | lateness p99 ms"
        f" (steady {args.rate:g}/s for {args.seconds:g} s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {fmt(r.create_per_s)} | {fmt(r.burst_per_s)} |"
            f" {fmt(r.percentile(50), 1)} | {fmt(r.percentile(99), 1)} |"
        )
    ours = results[0]
    for peer in results[1:]:
        lines.append(
            f"| Errands vs {peer.system} | {ratio(ours.create_per_s, peer.create_per_s, True)} |"
            f" {ratio(ours.burst_per_s, peer.burst_per_s, True)} |"
            f" {ratio(ours.percentile(50), peer.percentile(50), False)} |"
            f" {ratio(ours.percentile(99), peer.percentile(99), False)} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    results: list[Result] = []
    skipped: list[str] = []
    receiver = Receiver()
    try:
        async with aiohttp.ClientSession() as session:
            await receiver.ready(session)
        with postgres(args.database_url) as server_url:
            results.append(await bench_errands(server_url, receiver, args))
            print(table(results, args), flush=True)
            if "procrastinate" not in args.skip:
                results.append(await bench_procrastinate(server_url, receiver, args))
                print(table(results, args), flush=True)
            if "apscheduler" not in args.skip:
                results.append(await bench_apscheduler(server_url, receiver, args))
                print(table(results, args), flush=True)
        binary = None if "celery" in args.skip else ensure_redis()
        if "celery" in args.skip:
            pass
        elif binary is None:
            skipped.append("Celery: redis-server could not be installed from Debian")
        else:
            with redis_server(binary) as redis_url:
                celery_app.conf.broker_url = redis_url
                results.append(await bench_celery(redis_url, receiver, args))
    finally:
        receiver.close()

    cores = os.cpu_count()
    header = (
        f"Timers, {datetime.now(UTC):%Y-%m-%d}, {cores} cores, PostgreSQL "
        f"{'given' if args.database_url else 'embedded'}; created {args.create} (APScheduler "
        f"{args.create // 5}), burst {args.burst} (APScheduler {args.burst // 5})"
    )
    report = "\n".join([header, "", table(results, args), *[f"\n{note}" for note in skipped]])
    print("\n" + report)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("ERRANDS_DATABASE_URL"))
    parser.add_argument("--create", type=int, default=5000, help="timers created via the API")
    parser.add_argument("--burst", type=int, default=5000, help="timers due at one instant")
    parser.add_argument("--rate", type=float, default=500, help="steady timers per second")
    parser.add_argument("--seconds", type=float, default=4, help="length of the steady stream")
    parser.add_argument(
        "--skip", default="", help="peers to leave out: procrastinate,apscheduler,celery"
    )
    return parser.parse_args()


if __name__ == "__main__":
    if sys.argv[1:2] == ["receiver"]:
        run_receiver(int(sys.argv[2]))
    else:
        asyncio.run(main(parse_args()))
