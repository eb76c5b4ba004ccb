"""The sweeper: each feature's expiry removes what its retention lets go, in batches, and
nothing that is still wanted."""

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from errands.config import Settings
from errands.conversions import store as conversions
from errands.core import sweeper
from errands.core.db import open_pool
from errands.core.resources import Resources, open_resources
from errands.core.sweeper import Expiry
from errands.loops import EXPIRIES, LOOPS
from errands.stats.store import expire_stats

INSERT_STATS_ROW = """
    INSERT INTO stats_buckets (method, route, minute, process, count, errors, sum_ms, histogram)
    VALUES ('GET', %(route)s, now() - %(age)s, '', 1, 0, 1.0, '{1}')
"""

# A timer and its delivery (its state lives there), as the timers feature stores them.
INSERT_TIMER = """
    WITH timer AS (
        INSERT INTO timers (id, url, fire_at)
        VALUES (%(id)s, 'http://a.test/', now() - %(age)s)
    )
    INSERT INTO deliveries (id, source, url, status, scheduled_at, due_at, delivered_at)
    VALUES (%(id)s, 'timer', 'http://a.test/', %(status)s, now() - %(age)s,
            CASE WHEN %(status)s = 'pending' THEN now() - %(age)s END,
            CASE WHEN %(status)s = 'delivered' THEN now() - %(age)s END)
"""

INSERT_ALERT_DELIVERY = """
    INSERT INTO deliveries (id, source, url, status, scheduled_at, due_at, delivered_at)
    VALUES (%(id)s, 'alert', 'http://a.test/', 'delivered', now() - %(age)s, NULL,
            now() - %(age)s)
"""


@pytest.fixture
async def swept(settings: Settings) -> AsyncIterator[Resources]:
    retention = {
        "stats_retention_days": 10,
        "timer_retention_days": 5,
        "delivery_retention_days": 3,
        "sweep_interval_s": 0.1,
    }
    async with open_resources(settings.model_copy(update=retention)) as opened:
        yield opened


async def sweep_all(resources: Resources, expiries: dict[str, Expiry]) -> dict[str, int]:
    """Run every expiry until nothing expired is left, as the sweeper loop does; how many each
    removed."""
    return {name: await sweeper.run_expiry(resources, expire) for name, expire in expiries.items()}


def age(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


async def stats_routes(resources: Resources) -> set[str]:
    async with resources.pool.connection() as conn:
        cursor = await conn.execute("SELECT route FROM stats_buckets")
        return {row["route"] for row in await cursor.fetchall()}


async def ids_in(resources: Resources, table: str) -> set[uuid.UUID]:
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(f"SELECT id FROM {table}")  # noqa: S608 (a fixed name)
        return {row["id"] for row in await cursor.fetchall()}


async def test_old_stats_rows_go_and_recent_ones_stay(swept: Resources) -> None:
    async with swept.pool.connection() as conn:
        for route, age in [("/old", timedelta(days=11)), ("/recent", timedelta(days=9))]:
            await conn.execute(INSERT_STATS_ROW, {"route": route, "age": age})

    assert await sweep_all(swept, EXPIRIES) == dict.fromkeys(EXPIRIES, 0) | {"stats": 1}
    assert await stats_routes(swept) == {"/recent"}


async def test_finished_timers_past_retention_go_and_pending_ones_stay(swept: Resources) -> None:
    kept = {
        "recently fired": ("delivered", timedelta(days=4)),
        "pending and overdue": ("pending", timedelta(days=30)),
    }
    gone = {
        "fired long ago": ("delivered", timedelta(days=6)),
        "failed long ago": ("failed", timedelta(days=6)),
        "cancelled long ago": ("cancelled", timedelta(days=6)),
    }
    ids = {name: uuid.uuid4() for name in kept | gone}
    async with swept.pool.connection() as conn:
        for name, (status, age) in (kept | gone).items():
            await conn.execute(INSERT_TIMER, {"id": ids[name], "status": status, "age": age})

    removed = await sweep_all(swept, EXPIRIES)

    assert removed["timers"] == len(gone)
    assert await ids_in(swept, "timers") == {ids[name] for name in kept}
    assert await ids_in(swept, "deliveries") == {ids[name] for name in kept}


async def test_other_deliveries_follow_their_own_retention(swept: Resources) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    async with swept.pool.connection() as conn:
        await conn.execute(INSERT_ALERT_DELIVERY, {"id": old, "age": timedelta(days=4)})
        await conn.execute(INSERT_ALERT_DELIVERY, {"id": recent, "age": timedelta(days=2)})
        # A timer's delivery of the same age stays: timers keep theirs for 5 days.
        timer = uuid.uuid4()
        await conn.execute(
            INSERT_TIMER, {"id": timer, "status": "delivered", "age": timedelta(days=4)}
        )

    removed = await sweep_all(swept, EXPIRIES)

    assert removed["deliveries"] == 1
    assert await ids_in(swept, "deliveries") == {recent, timer}


async def test_an_expiry_is_repeated_until_its_backlog_is_gone(
    swept: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 2)
    async with swept.pool.connection() as conn:
        for n in range(5):
            await conn.execute(INSERT_STATS_ROW, {"route": f"/old{n}", "age": timedelta(days=20)})

    assert await sweep_all(swept, {"stats": expire_stats}) == {"stats": 5}
    assert await stats_routes(swept) == set()


async def test_the_sweeper_loop_sweeps_until_stopped(swept: Resources) -> None:
    async with swept.pool.connection() as conn:
        await conn.execute(INSERT_STATS_ROW, {"route": "/old", "age": timedelta(days=11)})
    stop = asyncio.Event()
    sweeping = asyncio.create_task(LOOPS["sweeper"](swept, stop))
    try:
        for _ in range(600):  # polled for up to 30 s
            if not await stats_routes(swept):
                break
            await asyncio.sleep(0.05)
        assert await stats_routes(swept) == set()
    finally:
        stop.set()
        await asyncio.wait_for(sweeping, 10)


async def test_a_database_out_of_reach_is_waited_out_until_stopped(swept: Resources) -> None:
    async with open_pool(swept.database_url, max_size=1) as pool:
        pass  # closed on leaving: every use now fails as with a database gone
    unreachable = dataclasses.replace(swept, pool=pool)
    stop = asyncio.Event()
    sweeping = asyncio.create_task(LOOPS["sweeper"](unreachable, stop))
    await asyncio.sleep(0.5)
    assert not sweeping.done(), "the sweeper waits for the database rather than failing"
    stop.set()
    await asyncio.wait_for(sweeping, 10)


async def test_each_expiry_runs_once_per_interval_however_many_sweepers_run(
    settings: Settings,
) -> None:
    runs = 0

    async def counted(resources: Resources, limit: int) -> int:
        nonlocal runs
        runs += 1
        return 0

    expiries = {f"counted-{uuid.uuid4()}": counted}
    stop = asyncio.Event()
    hourly = settings.model_copy(update={"sweep_interval_s": 3600})
    async with open_resources(hourly) as first, open_resources(hourly) as second:
        sweepers = [
            asyncio.create_task(sweeper.run_sweeper(each, expiries, stop))
            for each in (first, second)
        ]
        try:
            for _ in range(600):  # polled for up to 30 s
                if runs:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # time enough for the other sweeper to claim it too
            assert runs == 1
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*sweepers), 10)


async def test_the_sweep_removes_what_a_killed_upload_left_but_not_a_live_one(
    swept: Resources,
) -> None:
    live = await swept.storage.open_write("uploads/u1/original.png")
    await live.write(b"still arriving")
    partials = swept.settings.data_dir / "files" / ".partial"
    abandoned = partials / "left-by-a-killed-process"
    abandoned.write_bytes(b"half an upload")
    for path in partials.iterdir():
        age(path, days=1)  # both look old: only the lock tells them apart
    removed = await sweep_all(swept, EXPIRIES)
    assert removed["abandoned writes"] == 1
    assert not abandoned.exists()
    await live.commit()


async def store_file(resources: Resources, key: str, content: bytes) -> Path:
    writer = await resources.storage.open_write(key)
    await writer.write(content)
    await writer.commit()
    return resources.settings.data_dir / "files" / key


async def test_files_no_upload_records_go_once_older_than_any_upload_takes(
    swept: Resources,
) -> None:
    recorded_id, orphan_id, recent_orphan_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    recorded = await store_file(swept, f"uploads/{recorded_id}/f/original.png", b"kept")
    new_file = conversions.NewFile(
        uuid.uuid4(), "a.png", "png", 4, f"uploads/{recorded_id}/f/original.png"
    )
    await conversions.create_upload(swept.pool, recorded_id, [new_file], None)
    # What a request left when the storage went away before it could remove them, or its
    # process died before it wrote its row.
    orphan = await store_file(swept, f"uploads/{orphan_id}/f/original.png", b"orphaned")
    recent = await store_file(swept, f"uploads/{recent_orphan_id}/f/original.png", b"arriving")
    age(recorded, days=1)
    age(orphan, days=1)

    removed = await sweep_all(swept, EXPIRIES)

    assert removed["abandoned writes"] == 1
    assert not orphan.parent.parent.exists()
    assert recorded.read_bytes() == b"kept"
    assert recent.exists(), "a request still streaming (or just done) keeps its files"
