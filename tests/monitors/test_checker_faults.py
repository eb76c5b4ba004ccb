"""Checkers that die or freeze, as real `errands worker --only monitors` processes: a killed
checker's monitors are checked again within one lease, and a checker paused past its leases
starts no request for the monitors it lost."""

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg

from errands.config import Settings
from tests.fixtures.app import serve_app
from tests.fixtures.targets import TargetServer

LEASE_S = 6.0
INTERVAL_S = 5
MONITORS = 6
SLOW_ANSWER_S = 3.0


@asynccontextmanager
async def checker(settings: Settings, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": str(settings.database_url),
        "ERRANDS_DATA_DIR": str(settings.data_dir),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
        "ERRANDS_MONITOR_LEASE_S": str(LEASE_S),
        "ERRANDS_SHUTDOWN_GRACE_S": "10",
        "ERRANDS_LOG_LEVEL": "warning",
    }
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "errands",
            "worker",
            "--only",
            "monitors",
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            with_signal = signal.SIGCONT, signal.SIGTERM
            for sig in with_signal:
                process.send_signal(sig)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def leased_by(database_url: str, pid: int) -> set[str]:
    """URLs of the monitors whose lease the checker with this pid holds."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT url FROM monitors WHERE lease_owner LIKE %s AND lease_until > now()",
            (f"%:{pid}:%",),
        )
        return {row[0] for row in await cursor.fetchall()}


async def wait_for(predicate: object, within_s: float, message: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


async def create_monitors(settings: Settings, urls: list[str]) -> None:
    async with serve_app(settings) as running:
        for url in urls:
            created = await running.client.post("/monitors", json={"url": url, "interval_s": 5})
            assert created.status_code == 201, created.text


async def test_a_killed_checkers_monitors_are_checked_again_within_one_lease(
    settings: Settings, target_server: TargetServer, tmp_path: Path
) -> None:
    paths = [f"/slow{n}" for n in range(MONITORS)]
    urls = [target_server.route(path, delay_s=SLOW_ANSWER_S) for path in paths]
    await create_monitors(settings, urls)
    url = str(settings.database_url)
    async with checker(settings, tmp_path / "a.log") as first:
        await wait_for(
            lambda: all(target_server.hits[path] for path in paths), 60, "not every site checked"
        )
        held = await leased_by(url, first.pid)
        assert held, "the checker held no lease while its checks were in flight"
        hits_at_kill = {path: target_server.hits[path] for path in paths}
        first.kill()
        await first.wait()
        killed_at = time.monotonic()
        async with checker(settings, tmp_path / "b.log"):
            held_paths = [path for path in paths if target_server.url(path) in held]
            await wait_for(
                lambda: all(target_server.hits[p] > hits_at_kill[p] for p in held_paths),
                LEASE_S + 30,
                "the killed checker's monitors were not checked again",
            )
            # Start-up of the second checker included: well inside one lease plus a poll.
            assert time.monotonic() - killed_at < LEASE_S + 20


async def test_a_checker_paused_past_its_leases_starts_nothing_for_the_monitors_it_lost(
    settings: Settings, target_server: TargetServer, tmp_path: Path
) -> None:
    """Each monitor's site answers slowly with a redirect: a checker frozen while it waits would,
    on waking, follow the redirect for a slot another checker has meanwhile checked. The second
    hop must not happen."""
    hops = {f"/hop{n}": f"/end{n}" for n in range(MONITORS)}
    for end in hops.values():
        target_server.route(end)
    urls = [
        target_server.route(hop, delay_s=SLOW_ANSWER_S, redirect_to=target_server.url(end))
        for hop, end in hops.items()
    ]
    await create_monitors(settings, urls)
    url = str(settings.database_url)
    async with checker(settings, tmp_path / "a.log") as paused:
        await wait_for(
            lambda: all(target_server.hits[hop] for hop in hops), 60, "not every site checked"
        )
        paused.send_signal(signal.SIGSTOP)
        held = await leased_by(url, paused.pid)
        assert held, "the checker held no lease while its checks were in flight"
        async with checker(settings, tmp_path / "b.log"):
            held_hops = [hop for hop in hops if target_server.url(hop) in held]
            hits_at_pause = {hop: target_server.hits[hop] for hop in held_hops}
            await wait_for(
                lambda: all(target_server.hits[h] > hits_at_pause[h] for h in held_hops),
                LEASE_S + 30,
                "the paused checker's monitors were not taken over",
            )
            paused.send_signal(signal.SIGCONT)
            await asyncio.sleep(SLOW_ANSWER_S + 1)
            paused.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(paused.wait(), 30) == 0
        # Both checkers stopped after finishing what they had started: every first hop was
        # followed by its second, except the paused checker's, dropped on waking.
        for hop, end in hops.items():
            dropped = 1 if hop in held_hops else 0
            assert target_server.hits[end] == target_server.hits[hop] - dropped, (
                hop,
                target_server.hits[hop],
                target_server.hits[end],
            )
