"""The timers table and its deliveries: a timer's webhook is the delivery with the timer's id."""

import functools
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from errands.core import claims, delivery, paging
from errands.core.batching import Batcher
from errands.core.db import Pool
from errands.core.delivery import store as deliveries
from errands.core.resources import Resources

__all__ = [
    "SCHEDULES_CHANNEL",
    "SCHEDULE_SOURCE",
    "SOURCE",
    "IdempotencyConflict",
    "NewTimer",
    "TimerStatus",
    "advance_schedule",
    "cancel_timer",
    "count_pending",
    "create_schedule",
    "create_timer",
    "create_timer_once",
    "database_now",
    "delete_schedule",
    "expire_finished_timers",
    "get_attempts",
    "get_schedule",
    "get_timer",
    "list_schedules",
    "list_timers",
    "reschedule_timer",
    "retry_timer",
    "set_schedule_paused",
    "update_schedule",
]

SOURCE = "timer"
SCHEDULE_SOURCE = "schedule"
# The "timers" loop LISTENs here for schedules created, changed or resumed.
SCHEDULES_CHANNEL = "errands_schedules"
IDEMPOTENCY_WINDOW = timedelta(hours=24)

TimerStatus = Literal["pending", "fired", "failed", "cancelled"]
# Users speak of fired timers; the delivery core of delivered deliveries.
_DELIVERY_STATUS: dict[TimerStatus, deliveries.Status] = {
    "pending": "pending",
    "fired": "delivered",
    "failed": "failed",
    "cancelled": "cancelled",
}

INSERT_TIMERS = """
    INSERT INTO timers (id, url, fire_at)
    SELECT new.id, new.url, new.fire_at
      FROM unnest(%(ids)b::uuid[], %(urls)b::text[], %(fire_at)b::timestamptz[])
           AS new (id, url, fire_at)
"""

DATABASE_NOW = "SELECT now() AS now"

# A key older than the window is free again: the timer that had it lets go of it.
RELEASE_STALE_KEY = """
    UPDATE timers
       SET idempotency_key = NULL
     WHERE idempotency_key = %(key)s
       AND created_at <= now() - %(window)s
"""

INSERT_KEYED_TIMER = """
    INSERT INTO timers (id, url, fire_at, idempotency_key, request_digest)
    VALUES (%(id)s, %(url)s, %(fire_at)s, %(key)s, %(digest)s)
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
 RETURNING id
"""

KEYED_TIMER = """
    SELECT id, request_digest
      FROM timers
     WHERE idempotency_key = %(key)s
"""

# What users see of a timer. A pending timer whose lease is held is being sent right now.
TIMER_VIEW = """
    SELECT t.id,
           t.url,
           d.method,
           CASE WHEN d.status = 'pending' AND d.lease_until > now() THEN 'firing'
                WHEN d.status = 'delivered' THEN 'fired'
                ELSE d.status
           END AS status,
           CASE WHEN d.status = 'pending'
                THEN greatest(0, ceil(extract(epoch FROM t.fire_at - now())))::bigint
                ELSE 0
           END AS time_left,
           t.fire_at,
           d.attempts,
           d.due_at AS next_attempt_at,
           d.delivered_at AS fired_at,
           d.last_status,
           d.last_error,
           t.created_at
      FROM timers AS t
      JOIN deliveries AS d ON d.id = t.id
"""

GET_TIMER = TIMER_VIEW + " WHERE t.id = %(id)s"
GET_TIMERS = TIMER_VIEW + " WHERE t.id = ANY(%(ids)b::uuid[])"

LIST_TIMERS = (
    TIMER_VIEW
    + """
     WHERE (%(status)s::text IS NULL OR d.status = %(status)s)
       AND (%(after_created_at)s::timestamptz IS NULL
            OR (t.created_at, t.id) < (%(after_created_at)s, %(after_id)s::uuid))
     ORDER BY t.created_at DESC, t.id DESC
     LIMIT %(limit)s
"""
)

GET_ATTEMPTS = """
    SELECT attempt, attempted_at, status_code, latency_ms, error
      FROM delivery_attempts
     WHERE delivery_id = %(id)s
     ORDER BY attempt DESC
"""

MOVE_FIRE_AT = """
    UPDATE timers
       SET fire_at = %(fire_at)s
     WHERE id = %(id)s
"""

COUNT_PENDING = """
    SELECT count(*) AS pending
      FROM deliveries
     WHERE due_at IS NOT NULL
       AND source = 'timer'
"""


class IdempotencyConflict(Exception):
    """An Idempotency-Key already used, within its window, for a different request."""


@dataclass(frozen=True)
class NewTimer:
    """A timer as asked for: where, how, and after how many seconds."""

    url: str
    delay_s: int
    method: str
    headers: dict[str, str]
    body: bytes | None  # None: the default `{"id": "<timer id>"}`
    id: uuid.UUID


def _webhook(timer: NewTimer, fire_at: datetime) -> deliveries.NewDelivery:
    body = timer.body if timer.body is not None else f'{{"id": "{timer.id}"}}'.encode()
    return deliveries.NewDelivery(
        url=timer.url,
        body=body,
        source=SOURCE,
        method=timer.method,
        headers={"Content-Type": "application/json", **timer.headers},
        due_at=fire_at,
        id=timer.id,
    )


async def database_now(conn: psycopg.AsyncConnection[Any]) -> datetime:
    """Due times use PostgreSQL's clock, whichever machine the API or worker runs on."""
    row = await (await conn.execute(DATABASE_NOW)).fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


async def _insert_timers(pool: Pool, wake_within_s: float, batch: list[NewTimer]) -> list[None]:
    async with pool.connection() as conn, conn.transaction():
        now = await database_now(conn)
        fire_at = [now + timedelta(seconds=timer.delay_s) for timer in batch]
        await conn.execute(
            INSERT_TIMERS,
            {
                "ids": [timer.id for timer in batch],
                "urls": [timer.url for timer in batch],
                "fire_at": fire_at,
            },
        )
        await delivery.enqueue_all(
            conn,
            [_webhook(timer, when) for timer, when in zip(batch, fire_at, strict=True)],
            # NOTIFY serialises commits, so only batches with a timer due before the delivery
            # loop's next poll send one.
            wake=any(timer.delay_s <= wake_within_s for timer in batch),
        )
    return [None] * len(batch)


Item = TypeVar("Item")
Result = TypeVar("Result")


def _batcher_of(
    batchers: "weakref.WeakKeyDictionary[Pool, Batcher[Item, Result]]",
    pool: Pool,
    run: Callable[[list[Item]], Awaitable[Sequence[Result]]],
    name: str,
) -> Batcher[Item, Result]:
    """The pool's batcher in `batchers`, made with `run` the first time: one per pool, so all
    of a process's requests share its statements."""
    batcher = batchers.get(pool)
    if batcher is None:
        batcher = batchers[pool] = Batcher(run, name=name)
    return batcher


_creators: "weakref.WeakKeyDictionary[Pool, Batcher[NewTimer, None]]" = weakref.WeakKeyDictionary()


async def create_timer(pool: Pool, timer: NewTimer, *, wake_within_s: float) -> None:
    """Insert a pending timer and its delivery; return once both are committed.

    Timers asked for while one INSERT runs go into the next (group commit). A batch holding a
    timer due within `wake_within_s` wakes the delivery loop.
    """
    run = functools.partial(_insert_timers, pool, wake_within_s)
    await _batcher_of(_creators, pool, run, "timers:create").submit(timer)


async def create_timer_once(
    pool: Pool, timer: NewTimer, *, key: str, digest: bytes, wake_within_s: float
) -> tuple[uuid.UUID, bool]:
    """Create the timer unless `key` was used within 24 h: return (timer id, created). The same
    key with another request digest raises IdempotencyConflict."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(RELEASE_STALE_KEY, {"key": key, "window": IDEMPOTENCY_WINDOW})
        fire_at = await database_now(conn) + timedelta(seconds=timer.delay_s)
        cursor = await conn.execute(
            INSERT_KEYED_TIMER,
            {"id": timer.id, "url": timer.url, "fire_at": fire_at, "key": key, "digest": digest},
        )
        if await cursor.fetchone() is not None:
            await delivery.enqueue_all(
                conn, [_webhook(timer, fire_at)], wake=timer.delay_s <= wake_within_s
            )
            return timer.id, True
        # Another request holds the key; ON CONFLICT waited for it to commit, so it is visible.
        existing = await (await conn.execute(KEYED_TIMER, {"key": key})).fetchone()
    assert existing is not None
    if bytes(existing["request_digest"]) != digest:
        raise IdempotencyConflict(key)
    return existing["id"], False


async def _read_timers(pool: Pool, timer_ids: list[uuid.UUID]) -> list[dict[str, Any] | None]:
    async with pool.connection() as conn:
        rows = await (await conn.execute(GET_TIMERS, {"ids": timer_ids})).fetchall()
    found = {row["id"]: row for row in rows}
    return [found.get(timer_id) for timer_id in timer_ids]


_readers: "weakref.WeakKeyDictionary[Pool, Batcher[uuid.UUID, dict[str, Any] | None]]" = (
    weakref.WeakKeyDictionary()
)


async def get_timer(pool: Pool, timer_id: uuid.UUID) -> dict[str, Any] | None:
    """The timer as it is once this call starts, or None. Reads asked for while one SELECT
    runs share the next one."""
    run = functools.partial(_read_timers, pool)
    return await _batcher_of(_readers, pool, run, "timers:read").submit(timer_id)


async def list_timers(
    pool: Pool, *, status: TimerStatus | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, a page and the next page's cursor (None on the last). Raises
    paging.BadCursor for a cursor that did not come from here."""
    after_created_at, after_id = paging.cursor_position(cursor) if cursor else (None, None)
    params = {
        "status": None if status is None else _DELIVERY_STATUS[status],
        "after_created_at": after_created_at,
        "after_id": after_id,
        "limit": limit + 1,
    }
    async with pool.connection() as conn:
        rows = await (await conn.execute(LIST_TIMERS, params)).fetchall()
    return paging.split_page(rows, limit)


async def get_attempts(pool: Pool, timer_id: uuid.UUID) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        return await (await conn.execute(GET_ATTEMPTS, {"id": timer_id})).fetchall()


async def cancel_timer(pool: Pool, timer_id: uuid.UUID) -> tuple[bool, dict[str, Any] | None]:
    """Cancel a pending timer; return whether this call cancelled it, and the timer as it is now
    (None when there is no such timer)."""
    async with pool.connection() as conn:
        cancelled = await deliveries.cancel(conn, timer_id)
        return cancelled, await (await conn.execute(GET_TIMER, {"id": timer_id})).fetchone()


async def retry_timer(pool: Pool, timer_id: uuid.UUID) -> tuple[bool, dict[str, Any] | None]:
    """Queue a failed timer's webhook again now; return whether it was failed, and the timer."""
    async with pool.connection() as conn, conn.transaction():
        requeued = await deliveries.requeue(conn, timer_id)
        return requeued, await (await conn.execute(GET_TIMER, {"id": timer_id})).fetchone()


async def reschedule_timer(
    pool: Pool, timer_id: uuid.UUID, delay_s: int
) -> tuple[bool, dict[str, Any] | None]:
    """Move a pending timer nobody is sending to `delay_s` from now; return whether it moved,
    and the timer."""
    async with pool.connection() as conn, conn.transaction():
        fire_at = await database_now(conn) + timedelta(seconds=delay_s)
        moved = await deliveries.reschedule(conn, timer_id, fire_at)
        if moved:
            await conn.execute(MOVE_FIRE_AT, {"id": timer_id, "fire_at": fire_at})
        return moved, await (await conn.execute(GET_TIMER, {"id": timer_id})).fetchone()


async def count_pending(pool: Pool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(COUNT_PENDING)).fetchone()
    return 0 if row is None else int(row["pending"])


INSERT_SCHEDULE = """
    INSERT INTO schedules (id, cron, timezone, every_s, url, method, headers, body, next_at,
                           due_at)
    VALUES (%(id)s, %(cron)s, %(timezone)s, %(every_s)s, %(url)s, %(method)s, %(headers)s,
            %(body)s, %(next_at)s, %(next_at)s)
 RETURNING id, cron, timezone, every_s, url, method, headers, paused, next_at, fired, last_fired_at,
           created_at
"""

GET_SCHEDULE = """
    SELECT id, cron, timezone, every_s, url, method, headers, paused, next_at, fired, last_fired_at,
           created_at
      FROM schedules
     WHERE id = %(id)s
"""

LIST_SCHEDULES = """
    SELECT id, cron, timezone, every_s, url, method, headers, paused, next_at, fired, last_fired_at,
           created_at
      FROM schedules
     WHERE %(after_created_at)s::timestamptz IS NULL
        OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid)
     ORDER BY created_at DESC, id DESC
     LIMIT %(limit)s
"""

# What PATCH changes; a paused schedule stays paused, with its next occurrence moved.
UPDATE_SCHEDULE = """
    UPDATE schedules
       SET cron = %(cron)s,
           timezone = %(timezone)s,
           every_s = %(every_s)s,
           url = %(url)s,
           method = %(method)s,
           headers = %(headers)s,
           body = %(body)s,
           next_at = %(next_at)s,
           due_at = CASE WHEN paused THEN NULL ELSE %(next_at)s END
     WHERE id = %(id)s
 RETURNING id, cron, timezone, every_s, url, method, headers, paused, next_at, fired, last_fired_at,
           created_at
"""

SCHEDULE_FOR_UPDATE = "SELECT * FROM schedules WHERE id = %(id)s FOR UPDATE"

SET_PAUSED = """
    UPDATE schedules
       SET paused = %(paused)s,
           next_at = coalesce(%(next_at)s, next_at),
           due_at = CASE WHEN %(paused)s THEN NULL ELSE coalesce(%(next_at)s, next_at) END
     WHERE id = %(id)s
 RETURNING id, cron, timezone, every_s, url, method, headers, paused, next_at, fired, last_fired_at,
           created_at
"""

DELETE_SCHEDULE = "DELETE FROM schedules WHERE id = %(id)s"

# Moves on only the occurrence this worker claimed, and only under its lease.
ADVANCE_SCHEDULE = """
    UPDATE schedules
       SET next_at = %(following)s,
           due_at = %(following)s,
           fired = fired + 1,
           last_fired_at = now(),
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
       AND next_at = %(occurrence)s
       AND NOT paused
"""


async def create_schedule(pool: Pool, values: dict[str, Any]) -> dict[str, Any]:
    """Insert a schedule (`values` as INSERT_SCHEDULE names them) and wake the timers loop."""
    async with pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(INSERT_SCHEDULE, _jsonb_headers(values))).fetchone()
        await claims.notify(conn, SCHEDULES_CHANNEL)
    assert row is not None
    return row


async def get_schedule(pool: Pool, schedule_id: uuid.UUID) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        return await (await conn.execute(GET_SCHEDULE, {"id": schedule_id})).fetchone()


async def list_schedules(
    pool: Pool, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, a page and the next page's cursor; BadCursor for a foreign cursor."""
    after_created_at, after_id = paging.cursor_position(cursor) if cursor else (None, None)
    params = {"after_created_at": after_created_at, "after_id": after_id, "limit": limit + 1}
    async with pool.connection() as conn:
        rows = await (await conn.execute(LIST_SCHEDULES, params)).fetchall()
    return paging.split_page(rows, limit)


async def update_schedule(
    pool: Pool,
    schedule_id: uuid.UUID,
    change: Callable[[dict[str, Any], datetime], dict[str, Any]],
) -> dict[str, Any] | None:
    """Apply `change(current row, database now) -> new values` under a row lock; None when
    there is no such schedule."""
    async with pool.connection() as conn, conn.transaction():
        current = await (await conn.execute(SCHEDULE_FOR_UPDATE, {"id": schedule_id})).fetchone()
        if current is None:
            return None
        values = change(current, await database_now(conn))
        row = await (await conn.execute(UPDATE_SCHEDULE, _jsonb_headers(values))).fetchone()
        await claims.notify(conn, SCHEDULES_CHANNEL)
    return row


async def set_schedule_paused(
    pool: Pool,
    schedule_id: uuid.UUID,
    *,
    paused: bool,
    next_at: Callable[[dict[str, Any], datetime], datetime] | None = None,
) -> dict[str, Any] | None:
    """Pause, or resume from the occurrence `next_at(row, now)` gives; None when there is no
    such schedule."""
    async with pool.connection() as conn, conn.transaction():
        current = await (await conn.execute(SCHEDULE_FOR_UPDATE, {"id": schedule_id})).fetchone()
        if current is None:
            return None
        when = None if next_at is None else next_at(current, await database_now(conn))
        params = {"id": schedule_id, "paused": paused, "next_at": when}
        row = await (await conn.execute(SET_PAUSED, params)).fetchone()
        await claims.notify(conn, SCHEDULES_CHANNEL)
    return row


async def delete_schedule(pool: Pool, schedule_id: uuid.UUID) -> bool:
    """Delete a schedule; occurrences already queued are deliveries of their own and stay."""
    async with pool.connection() as conn:
        return (await conn.execute(DELETE_SCHEDULE, {"id": schedule_id})).rowcount == 1


async def advance_schedule(
    conn: psycopg.AsyncConnection[Any],
    owner: str,
    schedule_id: uuid.UUID,
    occurrence: datetime,
    following: datetime,
) -> bool:
    params = {"id": schedule_id, "owner": owner, "occurrence": occurrence, "following": following}
    return (await conn.execute(ADVANCE_SCHEDULE, params)).rowcount == 1


def _jsonb_headers(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "headers": Jsonb(values["headers"])}


# A finished timer is one whose delivery is no longer pending; it goes with its delivery (and
# that delivery's attempt log), kept for the retention from when it was sent, or was due.
EXPIRE_FINISHED_TIMERS = """
    WITH expired AS (
        SELECT id
          FROM deliveries
         WHERE source = 'timer'
           AND due_at IS NULL
           AND coalesce(delivered_at, scheduled_at) < now() - %(keep)s
         LIMIT %(limit)s
    ),
    timers_gone AS (
        DELETE FROM timers WHERE id IN (SELECT id FROM expired)
    )
    DELETE FROM deliveries WHERE id IN (SELECT id FROM expired)
"""


async def expire_finished_timers(resources: Resources, limit: int) -> int:
    """Delete up to `limit` finished timers older than ERRANDS_TIMER_RETENTION_DAYS."""
    keep = timedelta(days=resources.settings.timer_retention_days)
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(EXPIRE_FINISHED_TIMERS, {"keep": keep, "limit": limit})
        return cursor.rowcount
