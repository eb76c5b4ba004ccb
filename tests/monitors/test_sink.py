"""Storing check results: day partitions, idempotency on the check id, rollups, retention."""

import asyncio
import json
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from errands.core.bus import Batch, MemoryBus, Message
from errands.core.db import Pool
from errands.core.resources import Resources
from errands.monitors import sink, store
from errands.monitors.results import CheckResult, encode_check, histogram_of
from errands.monitors.sink import run_sink, store_batch


def results_for(
    monitor_id: uuid.UUID, start: datetime, count: int, step: timedelta, seed: int = 1
) -> list[CheckResult]:
    generator = random.Random(seed)
    results = []
    for n in range(count):
        down = n % 10 == 0
        results.append(
            CheckResult(
                check_id=uuid.uuid4(),
                monitor_id=monitor_id,
                checked_at=start + n * step,
                url="http://example.test/",
                status_code=None if down else 200,
                response_time_ms=None if down else round(generator.uniform(5, 500), 3),
                dns_ms=None,
                connect_ms=None,
                tls_ms=None,
                first_byte_ms=None,
                regex_matched=None,
                error_kind="timeout" if down else None,
                error="timed out" if down else None,
            )
        )
    return results


async def count(pool: Pool, query: str, *params: object) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        row = await cursor.fetchone()
    assert row is not None
    return int(next(iter(row.values())) or 0)


async def test_a_batch_is_stored_once_however_often_it_arrives(resources: Resources) -> None:
    monitor_id = uuid.uuid4()
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    results = results_for(monitor_id, start, 300, timedelta(seconds=30))
    values = [encode_check(result) for result in results]

    assert (await store_batch(resources, values)).stored == 300
    assert (await store_batch(resources, values)).stored == 0
    assert (await store_batch(resources, values[100:] + values[:50])).stored == 0

    pool = resources.pool
    assert await count(pool, "SELECT count(*) FROM checks") == 300
    assert await count(pool, "SELECT sum(checks) FROM check_rollups") == 300
    assert await count(pool, "SELECT sum(up) FROM check_rollups") == 270
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT hour, checks, responses, latency_histogram FROM check_rollups ORDER BY hour"
        )
        rollups = await cursor.fetchall()
    assert [row["hour"] for row in rollups] == [start + timedelta(hours=h) for h in range(3)]
    for row in rollups:
        in_hour = [
            r.response_time_ms
            for r in results
            if row["hour"] <= r.checked_at < row["hour"] + timedelta(hours=1)
            and r.response_time_ms is not None
        ]
        assert row["responses"] == len(in_hour)
        # Rows are stored as real (single precision): bucket them the same way.
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT array_agg(response_time_ms::float8) AS ms FROM checks"
                " WHERE checked_at >= %s AND checked_at < %s",
                (row["hour"], row["hour"] + timedelta(hours=1)),
            )
            stored = await cursor.fetchone()
        assert stored is not None
        assert row["latency_histogram"] == histogram_of([v for v in stored["ms"] if v])


async def test_a_batch_split_differently_on_redelivery_adds_only_the_new_rows(
    resources: Resources,
) -> None:
    monitor_id = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(minutes=30)
    values = [encode_check(r) for r in results_for(monitor_id, start, 100, timedelta(seconds=10))]
    assert (await store_batch(resources, values[:60])).stored == 60
    assert (await store_batch(resources, values[40:])).stored == 40
    assert await count(resources.pool, "SELECT count(*) FROM checks") == 100
    assert await count(resources.pool, "SELECT sum(checks) FROM check_rollups") == 100


async def test_partitions_are_made_on_demand_for_each_day(resources: Resources) -> None:
    monitor_id = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(days=5)
    values = [encode_check(r) for r in results_for(monitor_id, start, 6, timedelta(days=1))]
    assert (await store_batch(resources, values)).stored == 6
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT tableoid::regclass::text AS part, count(*) FROM checks GROUP BY 1"
        )
        parts = {row["part"]: row["count"] for row in await cursor.fetchall()}
    expected_days = {(start + timedelta(days=n)).date() for n in range(6)}
    assert parts == {store.partition_name(day): 1 for day in expected_days}


def stored_row(result: CheckResult) -> dict[str, object]:
    return {
        "check_id": result.check_id,
        "checked_at": result.checked_at,
        "status_code": result.status_code,
        "up": result.up,
        "regex_matched": result.regex_matched,
        "error_kind": result.error_kind,
        "error": result.error,
    }


async def stored_rows(pool: Pool) -> list[dict[str, object]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT check_id, checked_at, status_code, up, regex_matched, error_kind, error"
            " FROM checks ORDER BY checked_at"
        )
        return await cursor.fetchall()


MALFORMED = [
    b'{"schema": 2}',
    b"[1, 2]",
    b"42",
    b'{"schema": 1, "check_id": null}',
]


async def test_malformed_and_out_of_range_messages_are_left_out(resources: Resources) -> None:
    monitor_id = uuid.uuid4()
    now = datetime.now(UTC)
    good = results_for(monitor_id, now - timedelta(seconds=10), 3, timedelta(seconds=1))
    good.append(
        CheckResult(**{**vars(good[0]), "check_id": uuid.uuid4(), "error": "tab\tnew\nline \\"})
    )
    too_old = results_for(monitor_id, now - timedelta(days=1000), 1, timedelta(seconds=1))
    future = results_for(monitor_id, now + timedelta(days=30), 1, timedelta(seconds=1))
    bad_kind = encode_check(good[1]).replace(b'"error_kind":null', b'"error_kind":"gremlins"')
    values = [*MALFORMED, bad_kind, *(encode_check(r) for r in good + too_old + future)]

    batch = await store_batch(resources, values)

    assert (batch.stored, batch.skipped) == (4, len(values) - 4)
    by_time = sorted(good, key=lambda r: (r.checked_at, str(r.check_id)))
    rows = await stored_rows(resources.pool)
    assert sorted(rows, key=lambda r: (r["checked_at"], str(r["check_id"]))) == [
        stored_row(r) for r in by_time
    ]


async def test_a_message_postgresql_cannot_read_is_left_out_alone(resources: Resources) -> None:
    """Text that is not JSON makes PostgreSQL refuse the whole batch; the good messages of that
    batch are stored anyway, decoded one by one."""
    monitor_id = uuid.uuid4()
    now = datetime.now(UTC)
    good = results_for(monitor_id, now - timedelta(seconds=10), 5, timedelta(seconds=1))
    not_a_uuid = encode_check(good[0]).replace(str(good[0].check_id).encode(), b"not-a-uuid")
    values = [
        b"not json at all",
        b"\xff\xfe",
        not_a_uuid,
        *(encode_check(r) for r in good),
    ]

    batch = await store_batch(resources, values)

    assert (batch.stored, batch.skipped) == (5, 3)
    rows = await stored_rows(resources.pool)
    assert rows == [stored_row(r) for r in good]
    assert (await store_batch(resources, values)).stored == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dns_ms", "1e300"),  # above the largest real
        ("dns_ms", "1e-50"),  # non-zero below the smallest real
        ("checked_at", '"0001-01-01T00:00:00+01:00"'),  # before year 1 once in UTC
        ("x", "[" * 100_000 + "]" * 100_000),  # nested deeper than PostgreSQL parses
    ],
)
async def test_a_message_that_cannot_be_stored_never_blocks_the_others(
    resources: Resources, field: str, value: str
) -> None:
    """Next to a message that is not JSON (so the batch is decoded one by one), a message whose
    value PostgreSQL refuses is left out: raising instead would redeliver the batch for ever."""
    monitor_id = uuid.uuid4()
    good = results_for(
        monitor_id, datetime.now(UTC) - timedelta(seconds=10), 3, timedelta(seconds=1)
    )
    bad = json.loads(encode_check(good[0]))
    bad[field] = "PLACEHOLDER"
    refused = json.dumps(bad).replace('"PLACEHOLDER"', value).encode()
    values = [b"not json", refused, *(encode_check(r) for r in good[1:])]

    batch = await store_batch(resources, values)

    assert (batch.stored, batch.skipped) == (2, 2)
    assert await stored_rows(resources.pool) == [stored_row(r) for r in good[1:]]


async def test_an_error_text_postgresql_cannot_hold_is_stored_without_those_characters(
    resources: Resources,
) -> None:
    monitor_id = uuid.uuid4()
    result = results_for(monitor_id, datetime.now(UTC), 1, timedelta(seconds=1))[0]
    value = encode_check(result).replace(b'"timed out"', b'"timed\\u0000 out \\ud800"')

    assert (await store_batch(resources, [value])).stored == 1
    assert await stored_rows(resources.pool) == [{**stored_row(result), "error": "timed out ?"}]


async def test_retention_drops_whole_old_partitions_and_rollups(resources: Resources) -> None:
    monitor_id = uuid.uuid4()
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    old = results_for(monitor_id, today - timedelta(days=10), 5, timedelta(minutes=1))
    recent = results_for(monitor_id, today - timedelta(days=1), 5, timedelta(minutes=1))
    await store_batch(resources, [encode_check(r) for r in old + recent])

    dropped = await store.drop_expired(resources.pool, (today - timedelta(days=5)).date())

    assert dropped == [store.partition_name((today - timedelta(days=10)).date())]
    assert await count(resources.pool, "SELECT count(*) FROM checks") == 5
    assert await count(resources.pool, "SELECT sum(checks) FROM check_rollups") == 5


async def test_the_sink_loop_stores_what_the_in_process_bus_carries(
    resources: Resources, stop_event: asyncio.Event
) -> None:
    bus = resources.bus
    assert isinstance(bus, MemoryBus)  # no Kafka configured
    sink = asyncio.create_task(run_sink(resources, stop_event))
    monitor_id = uuid.uuid4()
    for result in results_for(monitor_id, datetime.now(UTC), 50, timedelta(seconds=1)):
        await bus.publish(str(monitor_id).encode(), encode_check(result))
    deadline = asyncio.get_running_loop().time() + 10
    while await count(resources.pool, "SELECT count(*) FROM checks") < 50:
        assert asyncio.get_running_loop().time() < deadline, "sink did not store the results"
        await asyncio.sleep(0.05)
    stop_event.set()
    await asyncio.wait_for(sink, 5)
    # Housekeeping made today's partition and the next ones ahead of need.
    today = datetime.now(UTC).date()
    for ahead in range(3):
        name = store.partition_name(today + timedelta(days=ahead))
        assert await count(resources.pool, "SELECT count(*) FROM pg_class WHERE relname = %s", name)


class OneBatchBus:
    """Hands the sink one batch and records when it is committed."""

    def __init__(self, values: list[bytes], events: list[str]) -> None:
        self.values = values
        self.events = events

    async def publish(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    async def consume(
        self, stop: asyncio.Event, *, max_messages: int
    ) -> AsyncGenerator[Batch, None]:
        async def commit() -> None:
            self.events.append("commit")

        yield Batch([Message(b"", value) for value in self.values], commit=commit)
        await stop.wait()


def failing(times: int, events: list[str]) -> Callable[..., Awaitable[store.StoredBatch]]:
    """`store.save_checks` that finds the database unreachable `times` times first."""
    save_checks = store.save_checks

    async def save(*args: Any, **kwargs: Any) -> store.StoredBatch:
        if events.count("unreachable") < times:
            events.append("unreachable")
            raise psycopg.OperationalError("connection refused")
        batch = await save_checks(*args, **kwargs)
        events.append("stored")
        return batch

    return save


async def test_a_batch_the_database_refused_is_stored_later_then_committed(
    resources: Resources, stop_event: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(store, "save_checks", failing(2, events))
    monkeypatch.setattr(sink, "RETRY_DELAY_S", 0.01)
    results = results_for(uuid.uuid4(), datetime.now(UTC), 20, timedelta(seconds=1))
    bus = OneBatchBus([encode_check(r) for r in results], events)
    task = asyncio.create_task(run_sink(replace(resources, bus=bus), stop_event))

    deadline = asyncio.get_running_loop().time() + 10
    while "commit" not in events:
        assert asyncio.get_running_loop().time() < deadline, f"no commit: {events}"
        await asyncio.sleep(0.01)
    stop_event.set()
    await asyncio.wait_for(task, 5)

    assert events == ["unreachable", "unreachable", "stored", "commit"]
    assert await count(resources.pool, "SELECT count(*) FROM checks") == 20


async def test_a_sink_stopped_while_the_database_is_down_exits_without_committing(
    resources: Resources, stop_event: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(store, "save_checks", failing(1_000_000, events))
    results = results_for(uuid.uuid4(), datetime.now(UTC), 5, timedelta(seconds=1))
    bus = OneBatchBus([encode_check(r) for r in results], events)
    task = asyncio.create_task(run_sink(replace(resources, bus=bus), stop_event))
    deadline = asyncio.get_running_loop().time() + 10
    while not events:
        assert asyncio.get_running_loop().time() < deadline, "the sink stored nothing"
        await asyncio.sleep(0.01)

    stop_event.set()

    await asyncio.wait_for(task, 5)
    assert "commit" not in events


async def test_housekeeping_the_database_refused_does_not_stop_the_sink(
    resources: Resources, stop_event: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*args: Any) -> list[str]:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(store, "drop_expired", unreachable)
    events: list[str] = []
    results = results_for(uuid.uuid4(), datetime.now(UTC), 5, timedelta(seconds=1))
    bus = OneBatchBus([encode_check(r) for r in results], events)
    task = asyncio.create_task(run_sink(replace(resources, bus=bus), stop_event))

    deadline = asyncio.get_running_loop().time() + 10
    while "commit" not in events:
        assert not task.done(), task.exception()
        assert asyncio.get_running_loop().time() < deadline, "the batch was not stored"
        await asyncio.sleep(0.01)
    stop_event.set()
    await asyncio.wait_for(task, 5)
    assert await count(resources.pool, "SELECT count(*) FROM checks") == 5
