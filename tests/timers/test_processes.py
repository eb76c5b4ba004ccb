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

# What POST /timer writes, for many timers at once: the timer and its webhook's delivery.
ADD_TIMERS_DUE_SOON = """
    WITH due AS (
        SELECT gen_random_uuid() AS id,
               now() + %(after_s)s * interval '1 second'
                     + random() * %(spread_s)s * interval '1 second' AS fire_at
          FROM generate_series(1, %(count)s)
    ), timers_added AS (
        INSERT INTO timers (id, url, fire_at)
        SELECT id, %(url)s, fire_at FROM due
    )
    INSERT INTO deliveries (id, source, url, headers, body, scheduled_at, due_at)
    SELECT id, 'timer', %(url)s, '{"Content-Type": "application/json"}',
           convert_to(json_build_object('id', id::text)::text, 'UTF8'), fire_at, fire_at
      FROM due
"""

LISTENING_FIRERS = """
    SELECT count(*) AS n
      FROM pg_stat_activity
     WHERE datname = current_database()
       AND query = 'LISTEN "errands_deliveries"'
"""

TIMERS_BY_STATUS = """
    SELECT CASE status WHEN 'delivered' THEN 'fired' ELSE status END AS status, count(*) AS n
      FROM deliveries
     GROUP BY status
"""

LEASED_BY_PROCESS = "SELECT id::text FROM deliveries WHERE lease_owner LIKE %s"

OVERDUE_PENDING = """
    SELECT count(*) AS n FROM deliveries WHERE status = 'pending' AND scheduled_at < now()
"""


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
    still_pending = await create(10, 5)  # due once the restarted firer runs, even on a busy machine
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
    options = {"delivery_lease_s": 2, "delivery_batch_size": 50, "delivery_max_in_flight": 50}
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
    await poll(pool, "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'",
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


HELD_BY_PROCESS = """
    SELECT id::text FROM deliveries WHERE lease_owner LIKE %s AND lease_until > now()
"""

PENDING_IDS = "SELECT id::text FROM deliveries WHERE status = 'pending'"

# The receiver answers each webhook after 1 s and the firer sends 4 at a time to it, so a firer
# holds 4 webhooks on the wire and 4 more waiting for a slot, all under short leases.
PAUSED_FIRER = {
    "delivery_lease_s": 2,
    "delivery_max_per_host": 4,
    "delivery_batch_size": 50,
    "delivery_max_in_flight": 50,
}


async def freeze_while_holding_leases(
    firers: Firers, receiver: Receiver, pool: Pool
) -> tuple[subprocess.Popen[bytes], set[str]]:
    """Start a firer on 200 due timers and SIGSTOP it once it holds leases it has not yet used;
    return it and what it held."""
    receiver.delay_s = 1.0
    async with pool.connection() as conn:
        await conn.execute(
            ADD_TIMERS_DUE_SOON, {"url": receiver.url, "after_s": 0, "spread_s": 0, "count": 200}
        )
    frozen = firers.start(**PAUSED_FIRER)
    deadline = time.monotonic() + 30
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(HELD_BY_PROCESS, (f"%:{frozen.pid}:%",))
            held = {row["id"] for row in await cursor.fetchall()}
        if len(held) >= 8 and len(receiver.counts()) >= 4:
            break
        assert time.monotonic() < deadline, firers.logs()
        await asyncio.sleep(0.02)
    frozen.send_signal(signal.SIGSTOP)
    return frozen, held


async def test_a_timer_cancelled_while_its_firer_is_frozen_is_never_sent(
    api: httpx.AsyncClient, firers: Firers, receiver: Receiver, pool: Pool
) -> None:
    frozen, held = await freeze_while_holding_leases(firers, receiver, pool)
    sent_before_the_pause = set(receiver.counts())
    await asyncio.sleep(3.0)  # past the frozen firer's 2 s leases

    cancelled_at: dict[str, float] = {}
    async with pool.connection() as conn:
        pending = [row["id"] for row in await (await conn.execute(PENDING_IDS)).fetchall()]
    for timer_id in pending:
        response = await api.delete(f"/timer/{timer_id}")
        if response.status_code == 200:
            cancelled_at[timer_id] = time.time()
    frozen.send_signal(signal.SIGCONT)
    await asyncio.sleep(3.0)  # the woken firer's replies arrive and its waiting sends run
    await firers.stop(frozen)

    held_unsent = held - sent_before_the_pause
    print(
        f"\nSIGSTOP/DELETE/SIGCONT: {len(held)} leases held at the pause, {len(held_unsent)} "
        f"unsent; {len(cancelled_at)} of {len(pending)} pending timers cancelled (200)"
    )
    assert held_unsent, "the pause caught leases not yet used"
    assert held_unsent <= set(cancelled_at), "expired leases do not block a cancel"
    sent_after_cancel = [
        delivery.timer_id
        for delivery in receiver.deliveries
        if delivery.timer_id in cancelled_at
        and delivery.received_at >= cancelled_at[delivery.timer_id] - 0.05
    ]
    assert sent_after_cancel == []


async def test_a_firer_woken_after_another_sent_its_timers_sends_none_again(
    firers: Firers, receiver: Receiver, pool: Pool
) -> None:
    frozen, held = await freeze_while_holding_leases(firers, receiver, pool)
    on_the_wire = set(receiver.counts())
    survivor = firers.start(delivery_lease_s=2)
    await receiver.wait_for_ids(200, timeout_s=60)
    await poll(pool, "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'",
               lambda n: n == 200, timeout_s=20)  # fmt: skip
    arrived_before_waking = len(receiver.deliveries)
    frozen.send_signal(signal.SIGCONT)
    await asyncio.sleep(3.0)
    await firers.stop(frozen)
    await firers.stop(survivor)

    counts = receiver.counts()
    duplicates = {timer_id for timer_id, n in counts.items() if n > 1}
    print(
        f"\nSIGSTOP, another firer, SIGCONT: {len(held)} leases held at the pause, "
        f"{len(duplicates)} timers sent twice"
    )
    assert len(receiver.deliveries) == arrived_before_waking, "the woken firer sent nothing"
    assert duplicates <= on_the_wire, "only requests already on the wire at the pause repeat"
    assert await statuses(pool) == {"fired": 200}
