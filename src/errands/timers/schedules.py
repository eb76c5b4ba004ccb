"""Recurring schedules: when the next occurrence falls, and the step that turns a due occurrence
into a delivery of its own.

A cron expression is read in the schedule's time zone by cronsim, with cron's DST rules: a local
time the spring change skips fires at the next valid minute, a local hour repeated in autumn
fires once. Occurrences missed while nothing ran (every worker down) fire once, as soon as a
worker claims the schedule, and the next occurrence is the first one after that moment.
"""

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from errands.core import claims, delivery
from errands.core.resources import Resources
from errands.timers import store

__all__ = ["check_cron", "check_timezone", "fire_schedule", "next_occurrence"]


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not an IANA time zone name") from None
    return name


def check_cron(expression: str) -> str:
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as error:
        raise ValueError(f"cron {expression!r} is not valid: {error}") from None
    return expression


def next_occurrence(
    *, cron: str | None, timezone: str, every_s: int | None, anchor: datetime, after: datetime
) -> datetime:
    """The first occurrence strictly after `after`: of the cron expression in `timezone`, or of
    `anchor` + n x `every_s`."""
    if cron is not None:
        local = after.astimezone(ZoneInfo(timezone))
        return next(CronSim(cron, local)).astimezone(UTC)
    assert every_s is not None
    periods = max((after - anchor) // timedelta(seconds=every_s) + 1, 1)
    return anchor + periods * timedelta(seconds=every_s)


def occurrence_body(schedule_id: object, occurrence: datetime) -> bytes:
    return json.dumps(
        {"schedule_id": str(schedule_id), "scheduled_for": occurrence.isoformat()}
    ).encode()


async def fire_schedule(resources: Resources, owner: str, schedule: claims.Row) -> None:
    """Queue the due occurrence's delivery and move the schedule to its next occurrence, in one
    transaction guarded by our lease: a worker that lost it, or a schedule changed meanwhile,
    queues nothing."""
    occurrence: datetime = schedule["next_at"]
    async with resources.pool.connection() as conn, conn.transaction():
        now = await store.database_now(conn)
        following = next_occurrence(
            cron=schedule["cron"],
            timezone=schedule["timezone"],
            every_s=schedule["every_s"],
            anchor=occurrence,
            after=max(now, occurrence),
        )
        if not await store.advance_schedule(conn, owner, schedule["id"], occurrence, following):
            return
        body = schedule["body"]
        await delivery.enqueue_all(
            conn,
            [
                delivery.NewDelivery(
                    url=schedule["url"],
                    body=occurrence_body(schedule["id"], occurrence) if body is None else body,
                    source=store.SCHEDULE_SOURCE,
                    method=schedule["method"],
                    headers={"Content-Type": "application/json", **schedule["headers"]},
                )
            ],
        )
