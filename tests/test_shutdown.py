"""SIGTERM under load, against a real `errands serve` process: /readyz turns 503 at once, no
accepted request fails, the process exits 0 within its grace period, and no lease stays held."""

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.fixtures.app import free_port
from tests.fixtures.targets import TargetServer

DRAIN_S = 3.0
GRACE_S = 3.0
# How long a load balancer keeps sending after it saw /readyz fail: well inside the drain.
BALANCER_LAG_S = 0.5


@dataclass
class Server:
    process: asyncio.subprocess.Process
    base_url: str
    log: Path


@dataclass
class LoadReport:
    answered: int = 0
    answered_while_draining: int = 0
    failures: list[str] = field(default_factory=list)
    unready_at: float | None = None


async def start_server(database_url: str, tmp_path: Path, drain_s: float) -> AsyncIterator[Server]:
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_PORT": str(port),
        "ERRANDS_DATA_DIR": str(tmp_path),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
        "ERRANDS_SHUTDOWN_DRAIN_S": str(drain_s),
        "ERRANDS_SHUTDOWN_GRACE_S": str(GRACE_S),
        "ERRANDS_DELIVERY_TIMEOUT_S": "60",
        "ERRANDS_LOG_LEVEL": "warning",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "errands", "serve", env=env, stdout=sink, stderr=sink
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        await wait_until_ready(server)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_until_ready(server: Server, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        while True:
            assert server.process.returncode is None, server.log.read_text()[-3000:]
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            await asyncio.sleep(0.1)


@pytest.fixture
async def draining_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    async for server in start_server(database_url, tmp_path, DRAIN_S):
        yield server


@pytest.fixture
async def plain_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    async for server in start_server(database_url, tmp_path, 0.0):
        yield server


def fresh_connections(base_url: str) -> httpx.AsyncClient:
    """A client opening one connection per request, so a refused connection is told apart from
    an accepted request that failed."""
    return httpx.AsyncClient(
        base_url=base_url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def balancer(server: Server, report: LoadReport, paths: list[str], workers: int) -> None:
    """Send requests like a load balancer: until a while after /readyz stops answering 200."""

    async def watch_readiness(client: httpx.AsyncClient) -> None:
        while report.unready_at is None:
            try:
                ready = (await client.get("/readyz")).status_code == 200
            except httpx.ConnectError:
                ready = False
            if not ready:
                report.unready_at = time.monotonic()
            await asyncio.sleep(0.02)

    async def send(client: httpx.AsyncClient) -> None:
        index = 0
        while report.unready_at is None or time.monotonic() < report.unready_at + BALANCER_LAG_S:
            path = paths[index % len(paths)]
            index += 1
            try:
                response = await client.get(path)
            except httpx.ConnectError:
                await asyncio.sleep(0.01)  # refused before being accepted: not a failure
                continue
            except httpx.HTTPError as error:
                report.failures.append(f"{path}: {error!r}")
                continue
            report.answered += 1
            report.answered_while_draining += report.unready_at is not None
            if response.status_code >= 500:
                report.failures.append(f"{path}: {response.status_code} {response.text}")

    async with fresh_connections(server.base_url) as client:
        await asyncio.gather(watch_readiness(client), *(send(client) for _ in range(workers)))


async def held_leases(database_url: str) -> list[tuple[str, str | None]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT status, lease_owner FROM deliveries")
        return [(row[0], row[1]) for row in await cursor.fetchall()]


async def wait_for_hit(target: TargetServer, path: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while target.hits[path] == 0:
        assert time.monotonic() < deadline, f"{path} was never requested"
        await asyncio.sleep(0.02)


async def test_sigterm_under_load_drains_finishes_requests_and_releases_leases(
    draining_server: Server, target_server: TargetServer, database_url: str
) -> None:
    server = draining_server
    hook = target_server.route("/hook", delay_s=60)
    slow_page = target_server.route(
        "/slow", delay_s=1.0, body=b"<title>Slow</title>", content_type="text/html"
    )
    async with fresh_connections(server.base_url) as client:
        created = await client.post("/timer", json={"seconds": 1, "url": hook})
        assert created.status_code in (200, 201), created.text
        timer_id = created.json()["id"]
        await wait_for_hit(target_server, "/hook")  # the timer's webhook is in flight
        paths = ["/healthz", f"/timer/{timer_id}", f"/timer/{uuid.uuid4()}", "/metrics"]
        report = LoadReport()
        load = asyncio.create_task(balancer(server, report, paths, workers=6))
        slow_title = asyncio.create_task(client.post("/titles", json={"domains": [slow_page]}))
        await wait_for_hit(target_server, "/slow")

        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        title = await slow_title
        await load
        exit_code = await asyncio.wait_for(server.process.wait(), DRAIN_S + 2 * GRACE_S + 10)
        exited_after_s = time.monotonic() - signalled_at

    assert exit_code == 0, server.log.read_text()[-3000:]
    assert exited_after_s < DRAIN_S + 2 * GRACE_S + 2
    assert report.failures == []
    assert report.unready_at is not None and report.unready_at - signalled_at < 1.0
    assert report.answered_while_draining > 0, "kept serving while the balancer caught up"
    assert report.answered > 20
    assert title.status_code == 200, title.text
    assert "Slow" in title.text, "the request in flight at SIGTERM was answered in full"
    assert await held_leases(database_url) == [("pending", None)], "released for the next worker"


async def test_without_drain_the_listener_closes_but_the_request_in_flight_finishes(
    plain_server: Server, target_server: TargetServer
) -> None:
    slow_page = target_server.route(
        "/slow", delay_s=1.0, body=b"<title>Slow</title>", content_type="text/html"
    )
    async with fresh_connections(plain_server.base_url) as client:
        slow_title = asyncio.create_task(client.post("/titles", json={"domains": [slow_page]}))
        await wait_for_hit(target_server, "/slow")
        plain_server.process.send_signal(signal.SIGTERM)

        title = await slow_title
        exit_code = await asyncio.wait_for(plain_server.process.wait(), 2 * GRACE_S + 10)

    assert title.status_code == 200 and "Slow" in title.text
    assert exit_code == 0, plain_server.log.read_text()[-3000:]


async def test_a_second_sigterm_stops_at_once(
    draining_server: Server, target_server: TargetServer
) -> None:
    slow_page = target_server.route(
        "/slow", delay_s=60, body=b"<title>Slow</title>", content_type="text/html"
    )
    async with fresh_connections(draining_server.base_url) as client:
        slow_title = asyncio.create_task(client.post("/titles", json={"domains": [slow_page]}))
        await wait_for_hit(target_server, "/slow")
        draining_server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        second_at = time.monotonic()
        draining_server.process.send_signal(signal.SIGTERM)

        await asyncio.wait_for(draining_server.process.wait(), DRAIN_S + GRACE_S + 10)
        slow_title.cancel()

    # Neither the drain nor the grace given to the request in flight was waited for.
    assert time.monotonic() - second_at < min(DRAIN_S, GRACE_S)
