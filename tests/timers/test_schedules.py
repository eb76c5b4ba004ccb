"""Recurring schedules: occurrences across DST changes, the API's checks, and the loop firing
each occurrence as a delivery of its own against a real receiver."""

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from errands.config import Settings
from errands.core.db import Pool
from errands.timers.schedules import next_occurrence
from tests.fixtures.app import serve_app
from tests.fixtures.targets import TargetServer

LOOPS = ["timers", "deliveries"]


def occurrences(cron: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = next_occurrence(
            cron=cron, timezone=timezone, every_s=None, anchor=after, after=after
        )
        found.append(after)
    return found


def test_a_daily_cron_keeps_its_local_time_across_the_spring_change() -> None:
    # Amsterdam moves from UTC+1 to UTC+2 on 29 March 2026.
    start = datetime(2026, 3, 27, 12, tzinfo=UTC)
    assert occurrences("0 9 * * *", "Europe/Amsterdam", start, 3) == [
        datetime(2026, 3, 28, 8, tzinfo=UTC),
        datetime(2026, 3, 29, 7, tzinfo=UTC),
        datetime(2026, 3, 30, 7, tzinfo=UTC),
    ]


def test_a_skipped_local_time_fires_once_at_the_next_valid_minute() -> None:
    start = datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert occurrences("30 2 * * *", "Europe/Amsterdam", start, 2) == [
        datetime(2026, 3, 29, 1, tzinfo=UTC),  # 03:00 local: 02:30 did not exist that night
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_a_repeated_local_hour_fires_once_in_autumn() -> None:
    # Amsterdam goes back from UTC+2 to UTC+1 on 25 October 2026: 02:30 happens twice.
    start = datetime(2026, 10, 24, 12, tzinfo=UTC)
    assert occurrences("30 2 * * *", "Europe/Amsterdam", start, 2) == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
    ]


def test_a_fixed_interval_stays_on_its_grid_after_a_gap() -> None:
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    after = anchor + timedelta(seconds=3 * 60 + 10)
    found = next_occurrence(cron=None, timezone="UTC", every_s=60, anchor=anchor, after=after)
    assert found == anchor + timedelta(minutes=4)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"cron": "61 * * * *", "url": "https://example.com/"}, "is not valid"),
        ({"cron": "* * * *", "url": "https://example.com/"}, "is not valid"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus", "url": "https://example.com/"},
         "not an IANA time zone"),
        ({"cron": "* * * * *", "every_s": 60, "url": "https://example.com/"}, "exactly one"),
        ({"url": "https://example.com/"}, "exactly one"),
        ({"every_s": 0, "url": "https://example.com/"}, "every_s"),
        ({"every_s": 60, "url": "https://example.com/", "minute": 1}, "minute"),
    ],
)  # fmt: skip
async def test_bad_schedules_are_refused_with_the_reason(
    api: httpx.AsyncClient, pool: Pool, body: dict[str, Any], complaint: str
) -> None:
    response = await api.post("/schedules", json=body)

    assert response.status_code == 422
    assert complaint in response.text
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM schedules")).fetchone()
    assert row == {"n": 0}


async def test_a_schedule_is_created_read_listed_changed_and_deleted(
    api: httpx.AsyncClient,
) -> None:
    created = await api.post(
        "/schedules",
        json={"cron": "*/5 * * * *", "timezone": "Europe/Amsterdam", "url": "https://example.com/"},
    )
    assert created.status_code == 201
    schedule = created.json()
    next_at = datetime.fromisoformat(schedule["next_at"])
    assert next_at.minute % 5 == 0 and next_at > datetime.now(UTC)
    assert (await api.get(f"/schedules/{schedule['id']}")).json() == schedule
    listed = (await api.get("/schedules")).json()
    assert [item["id"] for item in listed["schedules"]] == [schedule["id"]]

    changed = await api.patch(f"/schedules/{schedule['id']}", json={"every_s": 3600})
    assert changed.status_code == 200
    assert changed.json()["cron"] is None and changed.json()["every_s"] == 3600
    assert (await api.patch(f"/schedules/{schedule['id']}", json={"cron": "x"})).status_code == 422

    assert (await api.delete(f"/schedules/{schedule['id']}")).status_code == 204
    assert (await api.get(f"/schedules/{schedule['id']}")).status_code == 404
    assert (await api.delete(f"/schedules/{schedule['id']}")).status_code == 404
    assert (await api.post(f"/schedules/{uuid.uuid4()}/pause")).status_code == 404


async def wait_for_hits(server: TargetServer, path: str, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while server.hits[path] < count:
        assert time.monotonic() < deadline, f"{path} had {server.hits[path]} of {count} requests"
        await asyncio.sleep(0.05)


async def test_each_occurrence_is_its_own_delivery_until_paused(
    settings: Settings, target_server: TargetServer
) -> None:
    hook = target_server.route("/tick")
    async with serve_app(settings, loops=LOOPS) as running:
        client = running.client
        schedule = (await client.post("/schedules", json={"every_s": 1, "url": hook})).json()
        await wait_for_hits(target_server, "/tick", 3)

        paused = await client.post(f"/schedules/{schedule['id']}/pause")
        assert paused.json()["paused"] is True
        await asyncio.sleep(0.5)  # an occurrence already queued may still land
        hits_when_paused = target_server.hits["/tick"]
        await asyncio.sleep(2.0)
        assert target_server.hits["/tick"] == hits_when_paused, "nothing fires while paused"

        resumed = await client.post(f"/schedules/{schedule['id']}/resume")
        assert resumed.json()["paused"] is False
        await wait_for_hits(target_server, "/tick", hits_when_paused + 1)

    requests = target_server.requests["/tick"]
    webhook_ids = [request.headers["webhook-id"] for request in requests]
    assert len(set(webhook_ids)) == len(webhook_ids), "each occurrence has its own webhook-id"
    bodies = [json.loads(request.body) for request in requests]
    assert {body["schedule_id"] for body in bodies} == {schedule["id"]}
    assert len({body["scheduled_for"] for body in bodies}) == len(bodies)


async def test_occurrences_missed_while_nothing_ran_fire_once_on_start(
    settings: Settings, target_server: TargetServer, pool: Pool
) -> None:
    hook = target_server.route("/missed")
    async with serve_app(settings) as running:  # the API only: nothing fires
        schedule = (
            await running.client.post("/schedules", json={"every_s": 60, "url": hook})
        ).json()
    async with pool.connection() as conn:  # as if every worker had been down for an hour
        await conn.execute(
            "UPDATE schedules SET next_at = next_at - interval '1 hour',"
            " due_at = due_at - interval '1 hour' WHERE id = %s",
            (schedule["id"],),
        )

    async with serve_app(settings, loops=LOOPS) as running:
        await wait_for_hits(target_server, "/missed", 1)
        await asyncio.sleep(1.5)
        after = (await running.client.get(f"/schedules/{schedule['id']}")).json()

    assert target_server.hits["/missed"] == 1, "sixty missed occurrences fire once"
    assert after["fired"] == 1
    assert datetime.fromisoformat(after["next_at"]) > datetime.now(UTC)
