"""The scheduling core against a real PostgreSQL: claims, leases, release, wake-ups."""

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from psycopg.conninfo import make_conninfo

from errands.core import claims
from errands.core.claims import ClaimQueue, Row, run_claim_loop
from errands.core.db import Pool, open_pool
from errands.core.http import GuardedClient
from tests.fixtures.targets import TargetServer

CREATE_JOBS = """
    CREATE TABLE jobs (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        due_at      timestamptz,
        lease_owner text,
        lease_until timestamptz,
        done_by     text
    );
    CREATE INDEX jobs_due ON jobs (due_at) WHERE due_at IS NOT NULL;
"""

ADD_DUE_JOBS = "INSERT INTO jobs (due_at) SELECT now() FROM generate_series(1, %s)"

FINISH_JOB = """
    UPDATE jobs
       SET due_at = NULL, lease_owner = NULL, lease_until = NULL, done_by = %(owner)s
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""


@pytest.fixture
async def jobs(pool: Pool) -> Pool:
    async with pool.connection() as conn:
        await conn.execute(CREATE_JOBS.encode())
    return pool


async def add_due_jobs(pool: Pool, count: int) -> None:
    async with pool.connection() as conn:
        await conn.execute(ADD_DUE_JOBS, (count,))


def job_queue(**overrides: object) -> ClaimQueue:
    options: dict[str, object] = {
        "table": "jobs",
        "channel": "jobs",
        "lease": timedelta(seconds=30),
        "batch_size": 20,
        "max_in_flight": 20,
        "poll_interval_s": 0.2,
    }
    options.update(overrides)
    return ClaimQueue(**options)  # type: ignore[arg-type]


async def wait_until_all_done(pool: Pool, deadline_s: float = 15.0) -> None:
    async with asyncio.timeout(deadline_s):
        while True:
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT 1 FROM jobs WHERE due_at IS NOT NULL LIMIT 1")
                if await cursor.fetchone() is None:
                    return
            await asyncio.sleep(0.05)


async def test_concurrent_claimers_handle_every_row_exactly_once(
    jobs: Pool, database_url: str
) -> None:
    await add_due_jobs(jobs, 600)
    handled: list[uuid.UUID] = []
    stop = asyncio.Event()

    def claimer(owner: str) -> asyncio.Task[None]:
        async def handle(row: Row) -> None:
            handled.append(row["id"])
            await asyncio.sleep(0.001)
            async with jobs.connection() as conn:
                await conn.execute(FINISH_JOB, {"owner": owner, "id": row["id"]})

        return asyncio.create_task(
            run_claim_loop(job_queue(), jobs, database_url, handle, stop, owner=owner)
        )

    workers = [claimer(f"worker-{n}") for n in range(4)]
    await wait_until_all_done(jobs)
    stop.set()
    await asyncio.gather(*workers)

    assert len(handled) == 600
    assert max(Counter(handled).values()) == 1
    async with jobs.connection() as conn:
        cursor = await conn.execute("SELECT count(DISTINCT done_by) AS n FROM jobs")
        row = await cursor.fetchone()
    assert row is not None and row["n"] > 1, "the work was shared between claimers"


async def test_a_leased_row_is_not_claimed_again_until_its_lease_expires(jobs: Pool) -> None:
    await add_due_jobs(jobs, 5)
    queue = job_queue(lease=timedelta(seconds=1))

    first = await queue.claim(jobs, "first", 10)
    assert len(first) == 5
    assert await queue.claim(jobs, "second", 10) == []

    await asyncio.sleep(1.1)  # the first claimer died without finishing: its lease runs out
    taken_over = await queue.claim(jobs, "second", 10)
    assert {row["id"] for row in taken_over} == {row["id"] for row in first}
    assert {row["lease_owner"] for row in taken_over} == {"second"}


async def test_a_dead_claimers_rows_are_finished_by_a_live_one(
    jobs: Pool, database_url: str, stop_event: asyncio.Event
) -> None:
    await add_due_jobs(jobs, 50)
    queue = job_queue(lease=timedelta(seconds=1))
    orphaned = await queue.claim(jobs, "dead-worker", 50)
    assert len(orphaned) == 50

    async def handle(row: Row) -> None:
        async with jobs.connection() as conn:
            await conn.execute(FINISH_JOB, {"owner": "live-worker", "id": row["id"]})

    loop = asyncio.create_task(
        run_claim_loop(queue, jobs, database_url, handle, stop_event, owner="live-worker")
    )
    await wait_until_all_done(jobs)
    stop_event.set()
    await loop


async def test_a_handler_that_lost_its_lease_writes_nothing(jobs: Pool) -> None:
    await add_due_jobs(jobs, 1)
    queue = job_queue(lease=timedelta(milliseconds=200))
    [row] = await queue.claim(jobs, "slow", 1)
    await asyncio.sleep(0.3)
    [same] = await queue.claim(jobs, "fast", 1)
    assert same["id"] == row["id"]

    async with jobs.connection() as conn:
        late = await conn.execute(FINISH_JOB, {"owner": "slow", "id": row["id"]})
        assert late.rowcount == 0
        current = await conn.execute(FINISH_JOB, {"owner": "fast", "id": row["id"]})
        assert current.rowcount == 1


async def test_stop_releases_the_leases_of_unfinished_work(jobs: Pool, database_url: str) -> None:
    await add_due_jobs(jobs, 3)
    started = asyncio.Event()
    stop = asyncio.Event()

    async def handle_slowly(row: Row) -> None:
        started.set()
        await asyncio.sleep(60)

    loop = asyncio.create_task(
        run_claim_loop(job_queue(), jobs, database_url, handle_slowly, stop, grace_s=0.2)
    )
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(loop, 10)

    async with jobs.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE lease_owner IS NULL AND due_at IS NOT NULL"
        )
        row = await cursor.fetchone()
    assert row is not None and row["n"] == 3, "released rows are claimable again at once"


async def test_a_notify_wakes_a_sleeping_claimer_before_its_poll(
    jobs: Pool, database_url: str, stop_event: asyncio.Event
) -> None:
    handled = asyncio.Event()

    async def handle(row: Row) -> None:
        async with jobs.connection() as conn:
            await conn.execute(FINISH_JOB, {"owner": "me", "id": row["id"]})
        handled.set()

    queue = job_queue(poll_interval_s=60)
    loop = asyncio.create_task(
        run_claim_loop(queue, jobs, database_url, handle, stop_event, owner="me")
    )
    await asyncio.sleep(0.5)  # the claimer found nothing and sleeps for its 60 s poll
    async with jobs.connection() as conn, conn.transaction():
        await conn.execute(ADD_DUE_JOBS, (1,))
        await claims.notify(conn, "jobs")
    await asyncio.wait_for(handled.wait(), 5)
    stop_event.set()
    await loop


async def test_a_row_due_soon_is_claimed_when_due_without_a_notify(
    jobs: Pool, database_url: str, stop_event: asyncio.Event
) -> None:
    fired_late_by: list[float] = []

    async def handle(row: Row) -> None:
        async with jobs.connection() as conn:
            cursor = await conn.execute(
                "SELECT extract(epoch FROM clock_timestamp() - %s) AS late", (row["due_at"],)
            )
            late = await cursor.fetchone()
            await conn.execute(FINISH_JOB, {"owner": "me", "id": row["id"]})
        assert late is not None
        fired_late_by.append(float(late["late"]))

    queue = job_queue(poll_interval_s=5)
    async with jobs.connection() as conn:
        await conn.execute("INSERT INTO jobs (due_at) VALUES (now() + interval '300 ms')")
    loop = asyncio.create_task(
        run_claim_loop(queue, jobs, database_url, handle, stop_event, owner="me")
    )
    await wait_until_all_done(jobs)
    stop_event.set()
    await loop
    assert 0 <= fired_late_by[0] < 1.0, "slept until the row was due, not a whole poll"


CUT_CLAIMER_CONNECTIONS = """
    SELECT count(pg_terminate_backend(pid)) AS n
      FROM pg_stat_activity
     WHERE application_name = 'claimer'
"""

LEASE_STATE = "SELECT lease_owner, lease_until > now() AS held FROM jobs"


@pytest.fixture
def claimer_url(database_url: str) -> str:
    """The test database, under a name that lets a test cut the claimer's connections only."""
    return make_conninfo(database_url, application_name="claimer")


async def cut_claimer_connections(pool: Pool) -> None:
    """What a database restart or a network blip does to the claimer's open connections."""
    async with pool.connection() as conn:
        cursor = await conn.execute(CUT_CLAIMER_CONNECTIONS)
        row = await cursor.fetchone()
    assert row is not None and row["n"] > 0


async def test_the_loop_outlives_a_database_outage(
    jobs: Pool, claimer_url: str, stop_event: asyncio.Event
) -> None:
    handled = asyncio.Event()

    async def handle(row: Row) -> None:
        async with claimer_pool.connection() as conn:
            await conn.execute(FINISH_JOB, {"owner": "me", "id": row["id"]})
        handled.set()

    async with open_pool(claimer_url, max_size=4) as claimer_pool:
        loop = asyncio.create_task(
            run_claim_loop(job_queue(), claimer_pool, claimer_url, handle, stop_event, owner="me")
        )
        await asyncio.sleep(0.5)  # the claimer is polling an empty table
        await cut_claimer_connections(jobs)
        await asyncio.sleep(0.5)  # its next claim meets a dead connection
        assert not loop.done(), "the loop ended on a lost connection"

        await add_due_jobs(jobs, 1)
        await asyncio.wait_for(handled.wait(), 10)
        stop_event.set()
        await asyncio.wait_for(loop, 10)


async def test_leases_are_renewed_while_a_handler_runs_longer_than_the_lease(
    jobs: Pool, claimer_url: str, stop_event: asyncio.Event
) -> None:
    await add_due_jobs(jobs, 1)
    # One row in flight fills the claimer, so its renewals are all it asks of the database.
    queue = job_queue(lease=timedelta(seconds=1.2), max_in_flight=1)
    started = asyncio.Event()

    async def handle_slowly(row: Row) -> None:
        started.set()
        await asyncio.sleep(60)

    async with open_pool(claimer_url, max_size=4) as claimer_pool:
        loop = asyncio.create_task(
            run_claim_loop(queue, claimer_pool, claimer_url, handle_slowly, stop_event,
                           owner="me", grace_s=0.1)
        )  # fmt: skip
        await asyncio.wait_for(started.wait(), 10)
        await cut_claimer_connections(jobs)  # the next renewal fails; the one after gets through
        for _ in range(10):
            await asyncio.sleep(0.3)
            assert await queue.claim(jobs, "other", 1) == [], "the row was taken from its claimer"
        stop_event.set()
        await asyncio.wait_for(loop, 10)


async def test_leases_are_renewed_while_handlers_finish_after_stop(
    jobs: Pool, database_url: str
) -> None:
    await add_due_jobs(jobs, 1)
    queue = job_queue(lease=timedelta(seconds=0.6))
    started = asyncio.Event()
    stop = asyncio.Event()

    async def finish_within_the_grace(row: Row) -> None:
        started.set()
        await stop.wait()
        await asyncio.sleep(1.5)  # longer than the lease, shorter than the grace
        async with jobs.connection() as conn:
            await conn.execute(FINISH_JOB, {"owner": "me", "id": row["id"]})

    loop = asyncio.create_task(
        run_claim_loop(queue, jobs, database_url, finish_within_the_grace, stop, owner="me",
                       grace_s=10)
    )  # fmt: skip
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    taken = []
    while not loop.done():
        taken += await queue.claim(jobs, "other", 1)
        await asyncio.sleep(0.1)
    await loop

    assert taken == [], "the row was claimed again while its claimer was finishing it"
    async with jobs.connection() as conn:
        row = await (await conn.execute("SELECT done_by FROM jobs")).fetchone()
    assert row == {"done_by": "me"}


async def test_stop_during_a_database_outage_ends_cleanly(jobs: Pool, claimer_url: str) -> None:
    await add_due_jobs(jobs, 1)
    started = asyncio.Event()
    stop = asyncio.Event()

    async def handle_slowly(row: Row) -> None:
        started.set()
        await asyncio.sleep(60)

    async with open_pool(claimer_url, max_size=4) as claimer_pool:
        loop = asyncio.create_task(
            run_claim_loop(job_queue(), claimer_pool, claimer_url, handle_slowly, stop,
                           owner="me", grace_s=0.5)
        )  # fmt: skip
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
        await asyncio.sleep(0.1)  # the loop gives its handler the grace
        await cut_claimer_connections(jobs)
        await asyncio.wait_for(loop, 10)  # the release fails; the lease runs out instead

    async with jobs.connection() as conn:
        row = await (await conn.execute(LEASE_STATE)).fetchone()
    assert row == {"lease_owner": "me", "held": True}


async def test_a_worker_frozen_past_its_lease_sends_nothing_and_claims_again(
    jobs: Pool, database_url: str, stop_event: asyncio.Event, target_server: TargetServer
) -> None:
    await add_due_jobs(jobs, 1)
    queue = job_queue(lease=timedelta(seconds=1))
    effect_url = target_server.url("/effect")
    started: list[uuid.UUID] = []

    async with GuardedClient(allow_private=True) as http:

        async def handle(row: Row) -> None:
            started.append(row["id"])
            if len(started) == 1:
                # The whole process frozen (a GC pause, SIGSTOP): nothing renews the lease.
                time.sleep(1.1)  # noqa: ASYNC251
            await http.fetch("POST", effect_url)
            async with jobs.connection() as conn:
                await conn.execute(FINISH_JOB, {"owner": "me", "id": row["id"]})

        loop = asyncio.create_task(
            run_claim_loop(queue, jobs, database_url, handle, stop_event, owner="me")
        )
        await wait_until_all_done(jobs)
        stop_event.set()
        await loop

    assert len(started) == 2, "the lapsed row was dropped, then claimed again"
    assert started[0] == started[1]
    assert target_server.hits["/effect"] == 1, "the frozen handler's request was never sent"


async def test_a_renewed_lease_stays_valid_past_its_first_length(
    jobs: Pool, database_url: str, stop_event: asyncio.Event
) -> None:
    await add_due_jobs(jobs, 1)
    queue = job_queue(lease=timedelta(seconds=0.6))
    seen: list[tuple[bool, float]] = []

    async def handle(row: Row) -> None:
        await asyncio.sleep(2.0)  # several lease lengths, renewed every 0.2 s
        lease = claims.current_lease()
        assert lease is not None and lease.row_id == row["id"]
        seen.append((lease.valid(), lease.remaining_s()))
        async with jobs.connection() as conn:
            await conn.execute(FINISH_JOB, {"owner": "me", "id": row["id"]})

    loop = asyncio.create_task(
        run_claim_loop(queue, jobs, database_url, handle, stop_event, owner="me")
    )
    await wait_until_all_done(jobs)
    stop_event.set()
    await loop
    [(valid, remaining_s)] = seen
    assert valid and remaining_s <= 0.6


async def test_a_lapsed_lease_is_not_revived_by_a_renewal(jobs: Pool) -> None:
    await add_due_jobs(jobs, 2)
    queue = job_queue(lease=timedelta(milliseconds=300))
    rows = await queue.claim(jobs, "me", 2)
    await asyncio.sleep(0.4)
    assert await queue.renew(jobs, "me", [row["id"] for row in rows]) == set()
    fresh = await queue.claim(jobs, "me", 2)
    assert await queue.renew(jobs, "me", [row["id"] for row in fresh]) == {
        row["id"] for row in fresh
    }


def test_a_lease_lapses_a_safety_margin_before_it_ends() -> None:
    now = time.monotonic()
    lease = claims.Lease(uuid.uuid4(), "me", length_s=8.0, expires_at=now + 3)
    assert lease.valid()  # 3 s left, margin 2 s
    lease.expires_at = time.monotonic() + 1.5
    assert not lease.valid()
    with pytest.raises(claims.LeaseLapsed, match="safety margin"):
        lease.check()
