"""The timers table: creating, reading and cancelling timers, and recording how firing went."""

import functools
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from errands.core import claims
from errands.core.batching import Batcher
from errands.core.db import Pool
from errands.core.resources import Resources

__all__ = [
    "CHANNEL",
    "FiredTimer",
    "cancel_timer",
    "count_pending",
    "create_timer",
    "expire_finished_timers",
    "get_timer",
    "mark_failed",
    "mark_fired",
    "schedule_retry",
]

# Firers LISTEN here; creating a timer due sooner than their poll interval wakes them.
CHANNEL = "errands_timers"

# Ids are made here rather than by the database so a batch needs no RETURNING to match them up.
CREATE_TIMERS = """
    INSERT INTO timers (id, url, fire_at, due_at)
    SELECT new.id, new.url, now() + new.delay_s * interval '1 second',
           now() + new.delay_s * interval '1 second'
      FROM unnest(%(ids)s::uuid[], %(urls)s::text[], %(delays_s)s::float8[])
           AS new (id, url, delay_s)
"""

# What users see of a timer. A pending timer whose lease is held is being sent right now.
TIMER_VIEW = """
    SELECT id,
           url,
           CASE WHEN status = 'pending' AND lease_until > now() THEN 'firing'
                ELSE status
           END AS status,
           CASE WHEN status = 'pending'
                THEN greatest(0, ceil(extract(epoch FROM fire_at - now())))::bigint
                ELSE 0
           END AS time_left,
           fire_at,
           attempts,
           fired_at,
           last_error,
           created_at
      FROM timers
"""

GET_TIMER = TIMER_VIEW + " WHERE id = %(id)s"

# A timer being sent right now is left alone: its webhook may already be on the wire.
CANCEL_TIMER = """
    UPDATE timers
       SET status = 'cancelled',
           due_at = NULL,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND status = 'pending'
       AND (lease_until IS NULL OR lease_until < now())
"""

MARK_FIRED = """
    UPDATE timers
       SET status = 'fired',
           due_at = NULL,
           fired_at = sent.sent_at,
           attempts = timers.attempts + 1,
           last_error = NULL,
           lease_owner = NULL,
           lease_until = NULL
      FROM unnest(%(ids)s::uuid[], %(sent_at)s::timestamptz[]) AS sent (id, sent_at)
     WHERE timers.id = sent.id
       AND timers.lease_owner = %(owner)s
 RETURNING timers.id
"""

SCHEDULE_RETRY = """
    UPDATE timers
       SET due_at = now() + %(delay)s,
           attempts = attempts + 1,
           last_error = %(error)s,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""

MARK_FAILED = """
    UPDATE timers
       SET status = 'failed',
           due_at = NULL,
           attempts = attempts + 1,
           last_error = %(error)s,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""

# Pending timers are exactly those with a due time, so this reads the small partial index.
COUNT_PENDING = """
    SELECT count(*) AS pending
      FROM timers
     WHERE due_at IS NOT NULL
"""


@dataclass(frozen=True)
class FiredTimer:
    id: uuid.UUID
    sent_at: datetime


@dataclass(frozen=True)
class _NewTimer:
    id: uuid.UUID
    url: str
    delay_s: int
    wake_firers: bool


async def _insert_timers(pool: Pool, batch: list[_NewTimer]) -> list[None]:
    params = {
        "ids": [timer.id for timer in batch],
        "urls": [timer.url for timer in batch],
        "delays_s": [timer.delay_s for timer in batch],
    }
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(CREATE_TIMERS, params)
        if any(timer.wake_firers for timer in batch):
            await claims.notify(conn, CHANNEL)
    return [None] * len(batch)


# One batcher per pool, so all of a process's requests share its INSERTs.
_creators: "weakref.WeakKeyDictionary[Pool, Batcher[_NewTimer, None]]" = weakref.WeakKeyDictionary()


async def create_timer(pool: Pool, url: str, delay_s: int, *, wake_firers: bool) -> uuid.UUID:
    """Insert a pending timer and return its id once the row is committed.

    Timers asked for while one INSERT runs go into the next (group commit). `wake_firers` sends
    a NOTIFY with the batch, for timers due before the firers' next poll; other batches go
    without, since NOTIFY serialises commits.
    """
    creator = _creators.get(pool)
    if creator is None:
        creator = _creators[pool] = Batcher(
            functools.partial(_insert_timers, pool), name="timers:create"
        )
    timer = _NewTimer(uuid.uuid4(), url, delay_s, wake_firers)
    await creator.submit(timer)
    return timer.id


async def get_timer(pool: Pool, timer_id: uuid.UUID) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(GET_TIMER, {"id": timer_id})
        return await cursor.fetchone()


async def cancel_timer(pool: Pool, timer_id: uuid.UUID) -> tuple[bool, dict[str, Any] | None]:
    """Cancel a pending timer; return whether this call cancelled it, and the timer as it is now
    (None when there is no such timer)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(CANCEL_TIMER, {"id": timer_id})
        cancelled = cursor.rowcount == 1
        cursor = await conn.execute(GET_TIMER, {"id": timer_id})
        return cancelled, await cursor.fetchone()


async def mark_fired(pool: Pool, owner: str, fired: list[FiredTimer]) -> list[bool]:
    """Record delivered webhooks in one statement; say of each whether `owner` still held it."""
    params = {
        "owner": owner,
        "ids": [timer.id for timer in fired],
        "sent_at": [timer.sent_at for timer in fired],
    }
    async with pool.connection() as conn:
        cursor = await conn.execute(MARK_FIRED, params)
        held = {row["id"] for row in await cursor.fetchall()}
    return [timer.id in held for timer in fired]


async def schedule_retry(
    pool: Pool, owner: str, timer_id: uuid.UUID, delay: timedelta, error: str
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            SCHEDULE_RETRY, {"owner": owner, "id": timer_id, "delay": delay, "error": error}
        )


async def mark_failed(pool: Pool, owner: str, timer_id: uuid.UUID, error: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(MARK_FAILED, {"owner": owner, "id": timer_id, "error": error})


async def count_pending(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(COUNT_PENDING)
        row = await cursor.fetchone()
    return 0 if row is None else int(row["pending"])


# Finished timers (fired, failed, cancelled) have no due time; each is kept for the retention
# from when it fired, or was due.
EXPIRE_FINISHED_TIMERS = """
    DELETE FROM timers
     WHERE id IN (
           SELECT id
             FROM timers
            WHERE due_at IS NULL
              AND coalesce(fired_at, fire_at) < now() - %(keep)s
            LIMIT %(limit)s
     )
"""


async def expire_finished_timers(resources: Resources, limit: int) -> int:
    """Delete up to `limit` finished timers older than ERRANDS_TIMER_RETENTION_DAYS."""
    keep = timedelta(days=resources.settings.timer_retention_days)
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(EXPIRE_FINISHED_TIMERS, {"keep": keep, "limit": limit})
        return cursor.rowcount
