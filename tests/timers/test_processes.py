"""Firers as separate OS processes: restarts, several firers at once, and a firer killed -9."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from errands.core.db import Pool
from tests.timers.conftest import Receiver

ADD_TIMERS_DUE_SOON = """
    INSERT INTO timers (url, fire_at, due_at)
    SELECT %(url)s, fire_at, fire_at
      FROM (SELECT now() + %(after_s)s * interval '1 second'
                         + random() * %(spread_s)s * interval '1 second' AS fire_at
              FROM generate_series(1, %(count)s)) AS due
"""

LISTENING_FIRERS = """
    SELECT count(*) AS n
      FROM pg_stat_activity
     WHERE datname = current_database()
       AND query LIKE 'LISTEN%%'
"""

TIMERS_BY_STATUS = "SELECT status, count(*) AS n FROM timers GROUP BY status"

LEASED_BY_PROCESS = "SELECT id::text FROM timers WHERE lease_owner LIKE %s"

OVERDUE_PENDING = "SELECT count(*) AS n FROM timers WHERE status = 'pending' AND fire_at < now()"


class Firers:
    """Starts `errands worker --only timers` processes on the test's database."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.env = {
            **os.environ,
            "ERRANDS_DATABASE_URL": database_url,
            "ERRANDS_DATA_DIR": str(tmp_path),
            "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
            "ERRANDS_LOG_LEVEL": "warning",
        }
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, **settings: object) -> subprocess.Popen[bytes]:
        env = self.env | {f"ERRANDS_{name.upper()}": str(value) for name, value in settings.items()}
        with (self.tmp_path / f"firer-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "errands", "worker", "--only", "timers"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    async def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM, as a supervisor stops a service; it must exit cleanly."""
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0, self.logs()

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.tmp_path.glob("firer-*.log")))


@pytest.fixture
async def firers(database_url: str, tmp_path: Path) -> AsyncIterator[Firers]:
    started = Firers(database_url, tmp_path)
    yield started
    for process in started.processes:
        if process.poll() is None:
            process.kill()
            process.wait()


async def poll(pool: Pool, query: str, done: Callable[[int], bool], timeout_s: float) -> None:
    """Run a `SELECT count(*) AS n` query until `done(n)`; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with pool.connection() as conn:
            row = await (await conn.execute(query)).fetchone()
        assert row is not None
        if done(row["n"]):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still {row['n']} after {timeout_s} s: {query}")
        await asyncio.sleep(0.05)


async def statuses(pool: Pool) -> dict[str, int]:
    async with pool.connection() as conn:
        rows = await (await conn.execute(TIMERS_BY_STATUS)).fetchall()
    return {row["status"]: row["n"] for row in rows}


async def test_timers_survive_a_restart_and_each_fires_once(
    api: httpx.AsyncClient, firers: Firers, receiver: Receiver, pool: Pool
) -> None:
    async def create(seconds: int, count: int) -> dict[str, float]:
        due = {}
        for _ in range(count):
            response = await api.post("/timer", json={"seconds": seconds, "url": receiver.url})
            due[response.json()["id"]] = time.time() + seconds
        return due

    before = await create(0, 5)
    first = firers.start()
    await receiver.wait_for_ids(5, timeout_s=20)
    await firers.stop(first)

    # While no firer runs: some timers expire, others are still pending at restart.
    expire_while_down = await create(1, 5)
    still_pending = await create(6, 5)
    await poll(pool, OVERDUE_PENDING, lambda n: n == 5, timeout_s=10)
    restarted_at = time.time()
    second = firers.start()
    await receiver.wait_for_ids(15, timeout_s=20)
    await firers.stop(second)

    assert receiver.counts() == dict.fromkeys(before | expire_while_down | still_pending, 1)
    arrived = {delivery.timer_id: delivery.received_at for delivery in receiver.deliveries}
    for timer_id in expire_while_down:
        assert arrived[timer_id] > restarted_at  # sent as soon as a firer came back
    for timer_id, due_at in still_pending.items():
        assert due_at - 0.5 < arrived[timer_id] < due_at + 1.0
    assert await statuses(pool) == {"fired": 15}


async def test_three_firers_send_each_of_2000_timers_exactly_once(
    firers: Firers, receiver: Receiver, pool: Pool
) -> None:
    running = [firers.start() for _ in range(3)]
    await poll(pool, LISTENING_FIRERS, lambda n: n == 3, timeout_s=20)
    async with pool.connection() as conn:
        await conn.execute(
            ADD_TIMERS_DUE_SOON, {"url": receiver.url, "after_s": 1, "spread_s": 1, "count": 2000}
        )

    await receiver.wait_for_ids(2000, timeout_s=40)
    for process in running:
        await firers.stop(process)

    counts = receiver.counts()
    assert len(counts) == 2000
    assert [timer_id for timer_id, n in counts.items() if n > 1] == []
    assert await statuses(pool) == {"fired": 2000}


async def test_a_firer_killed_mid_batch_loses_nothing(
    firers: Firers, receiver: Receiver, pool: Pool
) -> None:
    receiver.delay_s = 0.2  # keep webhooks in flight when the firer dies
    options = {"timer_lease_s": 2, "timer_batch_size": 50, "timer_max_in_flight": 50}
    doomed = firers.start(**options)
    survivor = firers.start(**options)
    await poll(pool, LISTENING_FIRERS, lambda n: n == 2, timeout_s=20)
    async with pool.connection() as conn:
        await conn.execute(
            ADD_TIMERS_DUE_SOON, {"url": receiver.url, "after_s": 0, "spread_s": 0, "count": 600}
        )
    await receiver.wait_for_ids(150, timeout_s=20)

    doomed.kill()
    doomed.wait()
    # What the dead firer held: the only timers that may be sent twice.
    async with pool.connection() as conn:
        cursor = await conn.execute(LEASED_BY_PROCESS, (f"%:{doomed.pid}:%",))
        crash_window = {row["id"] for row in await cursor.fetchall()}
    await receiver.wait_for_ids(600, timeout_s=40)
    await poll(pool, "SELECT count(*) AS n FROM timers WHERE status = 'fired'",
               lambda n: n == 600, timeout_s=20)  # fmt: skip
    await firers.stop(survivor)

    counts = receiver.counts()
    duplicates = {timer_id for timer_id, n in counts.items() if n > 1}
    print(
        f"\nkill -9 mid-batch: {len(counts)} of 600 timers delivered, {len(duplicates)} twice, "
        f"{len(crash_window)} held by the killed firer"
    )
    assert len(counts) == 600
    assert crash_window  # the kill did land mid-batch
    assert duplicates <= crash_window
    assert max(counts.values()) <= 2
