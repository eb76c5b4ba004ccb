"""The embedded PostgreSQL's lifecycle under real `errands serve` processes: a SIGKILL does not
stop later clean stops from stopping it, and a server that stops under a running process is
started again by that process."""

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psutil

from tests.fixtures.app import free_port

START_WITHIN_S = 90.0


@asynccontextmanager
async def serve(data_dir: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`errands serve` on the embedded database in `data_dir`, ready; stopped at the end if it
    is still running."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "ERRANDS_DATABASE_URL"}
    env |= {
        "ERRANDS_DATA_DIR": str(data_dir),
        "ERRANDS_PORT": str(port),
        "ERRANDS_LOG_LEVEL": "warning",
        "ERRANDS_SHUTDOWN_GRACE_S": "3",
    }
    log = data_dir / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "errands", "serve", env=env, stdout=sink, stderr=sink
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            await until(lambda: ready(base_url), "serve never became ready")
        except AssertionError:
            raise AssertionError(log.read_text()[-3000:]) from None
        yield process, base_url
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def ready(base_url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"{base_url}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def until(condition: "object", message: str) -> None:
    deadline = time.monotonic() + START_WITHIN_S
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.2)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        first_line = (data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    return int(first_line) if first_line.strip().isdigit() else None


def postgres_is_running(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_postgres(pid: int | None) -> None:
    if pid is not None and postgres_is_running(pid):
        os.kill(pid, signal.SIGINT)  # fast shutdown


async def stopped(pid: int) -> bool:
    return not postgres_is_running(pid)


async def test_after_a_sigkill_a_later_clean_stop_still_stops_postgres(tmp_path: Path) -> None:
    try:
        async with serve(tmp_path) as (killed, _):
            killed.kill()
            await killed.wait()
        first_pid = postmaster_pid(tmp_path)
        assert first_pid is not None and postgres_is_running(first_pid), "left running"

        async with serve(tmp_path) as (later, _):
            later.terminate()
            assert await later.wait() == 0

        await until(lambda: stopped(first_pid), "the clean stop left PostgreSQL running")
    finally:
        stop_postgres(postmaster_pid(tmp_path))


async def test_a_postgres_that_stops_under_serve_is_started_again(tmp_path: Path) -> None:
    try:
        async with serve(tmp_path) as (process, base_url):
            first_pid = postmaster_pid(tmp_path)
            assert first_pid is not None
            os.kill(first_pid, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
            await until(lambda: stopped(first_pid), "PostgreSQL did not stop")

            async def serving_again() -> bool:
                async with httpx.AsyncClient(timeout=30) as client:
                    created = await client.post(
                        f"{base_url}/timer", json={"hours": 1, "url": "http://a.test/"}
                    )
                    health = await client.get(f"{base_url}/healthz")
                return created.status_code == 200 and health.status_code == 200

            await until(serving_again, "serve never had its database back")
            second_pid = postmaster_pid(tmp_path)
            assert second_pid is not None and second_pid != first_pid
            assert process.returncode is None
            process.terminate()
            assert await process.wait() == 0
        await until(lambda: stopped(second_pid), "the restarted PostgreSQL outlived serve")
    finally:
        stop_postgres(postmaster_pid(tmp_path))
