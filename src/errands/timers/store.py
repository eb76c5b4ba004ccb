"""The timers table: creating, reading and cancelling timers, and recording how firing went."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from errands.core import claims
from errands.core.db import Pool

__all__ = [
    "CHANNEL",
    "FiredTimer",
    "cancel_timer",
    "count_pending",
    "create_timer",
    "get_timer",
    "mark_failed",
    "mark_fired",
    "schedule_retry",
]

# Firers LISTEN here; creating a timer due sooner than their poll interval wakes them.
CHANNEL = "errands_timers"

CREATE_TIMER = """
    INSERT INTO timers (url, fire_at, due_at)
    VALUES (%(url)s, now() + %(delay)s, now() + %(delay)s)
    RETURNING id
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


async def create_timer(pool: Pool, url: str, delay: timedelta, *, wake_firers: bool) -> uuid.UUID:
    """Insert a pending timer and return its id once committed.

    `wake_firers` sends a NOTIFY in the same transaction, for timers due before the firers' next
    poll; the others are left without one, since NOTIFY serialises commits.
    """
    params = {"url": url, "delay": delay}
    async with pool.connection() as conn:
        if not wake_firers:
            cursor = await conn.execute(CREATE_TIMER, params)
            row = await cursor.fetchone()
        else:
            async with conn.transaction():
                cursor = await conn.execute(CREATE_TIMER, params)
                row = await cursor.fetchone()
                await claims.notify(conn, CHANNEL)
    assert row is not None  # INSERT ... RETURNING yields its row
    timer_id: uuid.UUID = row["id"]
    return timer_id


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


async def mark_fired(pool: Pool, owner: str, fired: list[FiredTimer]) -> set[uuid.UUID]:
    """Record delivered webhooks in one statement; return the ids whose lease `owner` still held."""
    params = {
        "owner": owner,
        "ids": [timer.id for timer in fired],
        "sent_at": [timer.sent_at for timer in fired],
    }
    async with pool.connection() as conn:
        cursor = await conn.execute(MARK_FIRED, params)
        return {row["id"] for row in await cursor.fetchall()}


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
