"""The deliveries table: enqueueing in the caller's transaction, recording attempts, reading."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from errands.core import claims, paging
from errands.core.db import Pool
from errands.core.resources import Resources

__all__ = [
    "ATTEMPTS_KEPT",
    "CHANNEL",
    "AttemptRecord",
    "Deferred",
    "NewDelivery",
    "Status",
    "cancel",
    "count_by_status",
    "defer",
    "enqueue",
    "enqueue_all",
    "expire_finished_deliveries",
    "get_delivery",
    "list_deliveries",
    "record_attempts",
    "requeue",
    "reschedule",
]

# The delivery loop LISTENs here; enqueueing wakes it when the transaction commits.
CHANNEL = "errands_deliveries"
ATTEMPTS_KEPT = 20

Status = Literal["pending", "delivered", "failed", "cancelled"]

INSERT_DELIVERIES = """
    INSERT INTO deliveries (id, source, transport, url, method, headers, body,
                            scheduled_at, due_at)
    SELECT new.id, new.source, new.transport, new.url, new.method, new.headers, new.body,
           coalesce(new.due_at, now()), coalesce(new.due_at, now())
      FROM unnest(%(ids)b::uuid[], %(sources)b::text[], %(transports)b::text[], %(urls)b::text[],
                  %(methods)b::text[], %(headers)b::jsonb[], %(bodies)b::bytea[],
                  %(due_at)b::timestamptz[])
           AS new (id, source, transport, url, method, headers, body, due_at)
"""

# One statement records a whole batch of attempts, whatever their outcome: the row moves on only
# while `owner` still holds its lease, the attempt is logged, and the log is kept to its last 20.
RECORD_ATTEMPTS = """
    WITH outcome AS (
        SELECT *
          FROM unnest(%(ids)b::uuid[], %(results)b::text[], %(attempted_at)b::timestamptz[],
                      %(status_codes)b::integer[], %(latency_ms)b::float8[], %(errors)b::text[],
                      %(retry_in_s)b::float8[])
               AS o (id, result, attempted_at, status_code, latency_ms, error, retry_in_s)
    ), recorded AS (
        UPDATE deliveries AS d
           SET status = CASE WHEN o.result = 'retry' THEN 'pending' ELSE o.result END,
               due_at = CASE WHEN o.result = 'retry'
                             THEN now() + o.retry_in_s * interval '1 second'
                        END,
               attempts = d.attempts + 1,
               delivered_at = CASE WHEN o.result = 'delivered' THEN o.attempted_at END,
               last_status = o.status_code,
               last_error = o.error,
               lease_owner = NULL,
               lease_until = NULL
          FROM outcome AS o
         WHERE d.id = o.id
           AND d.lease_owner = %(owner)s
     RETURNING d.id, d.attempts
    ), logged AS (
        INSERT INTO delivery_attempts (delivery_id, attempt, attempted_at, status_code,
                                       latency_ms, error)
        SELECT r.id, r.attempts, o.attempted_at, o.status_code, o.latency_ms, o.error
          FROM recorded AS r
          JOIN outcome AS o USING (id)
    ), pruned AS (
        DELETE FROM delivery_attempts AS a
         USING recorded AS r
         WHERE a.delivery_id = r.id
           AND a.attempt <= r.attempts - %(kept)s
    )
    SELECT id FROM recorded
"""

# Deliveries put back for a moment without an attempt: their host was crowded.
DEFER = """
    UPDATE deliveries AS d
       SET due_at = now() + later.delay_s * interval '1 second',
           lease_owner = NULL,
           lease_until = NULL
      FROM unnest(%(ids)b::uuid[], %(delays_s)b::float8[]) AS later (id, delay_s)
     WHERE d.id = later.id
       AND d.lease_owner = %(owner)s
"""

# A delivery being sent right now is left alone: its request may already be on the wire. One
# whose lease ran out is taken: its old holder checks its lease before sending and finds it lapsed.
CANCEL = """
    UPDATE deliveries
       SET status = 'cancelled',
           due_at = NULL,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND status = 'pending'
       AND (lease_until IS NULL OR lease_until < now())
"""

REQUEUE = """
    UPDATE deliveries
       SET status = 'pending',
           due_at = now(),
           requeued_after = attempts
     WHERE id = %(id)s
       AND status = 'failed'
"""

RESCHEDULE = """
    UPDATE deliveries
       SET due_at = %(due_at)s,
           scheduled_at = %(due_at)s
     WHERE id = %(id)s
       AND status = 'pending'
       AND (lease_until IS NULL OR lease_until < now())
"""

DELIVERY_VIEW = """
    SELECT id, source, transport, url, method, status,
           status = 'pending' AND lease_until > now() AS sending,
           attempts, scheduled_at, due_at, delivered_at, last_status, last_error, created_at
      FROM deliveries
"""

LIST_DELIVERIES = (
    DELIVERY_VIEW
    + """
     WHERE (%(status)s::text IS NULL OR status = %(status)s)
       AND (%(source)s::text IS NULL OR source = %(source)s)
       AND (%(after_created_at)s::timestamptz IS NULL
            OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid))
     ORDER BY created_at DESC, id DESC
     LIMIT %(limit)s
"""
)

GET_DELIVERY = DELIVERY_VIEW + " WHERE id = %(id)s"

GET_ATTEMPTS = """
    SELECT attempt, attempted_at, status_code, latency_ms, error
      FROM delivery_attempts
     WHERE delivery_id = %(id)s
     ORDER BY attempt DESC
"""

COUNT_BY_STATUS = """
    SELECT status, count(*) AS n
      FROM deliveries
     WHERE %(source)s::text IS NULL OR source = %(source)s
     GROUP BY status
"""


@dataclass(frozen=True)
class NewDelivery:
    url: str
    body: bytes
    source: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    due_at: datetime | None = None  # None: now
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    transport: str = "http"


async def enqueue_all(
    conn: psycopg.AsyncConnection[Any], deliveries: Sequence[NewDelivery], *, wake: bool = True
) -> None:
    """Insert deliveries in the caller's transaction (the outbox pattern). `wake` NOTIFYs the
    delivery loop at commit; callers creating many far-off deliveries skip it, as NOTIFY
    serialises commits."""
    await conn.execute(
        INSERT_DELIVERIES,
        {
            "ids": [item.id for item in deliveries],
            "sources": [item.source for item in deliveries],
            "transports": [item.transport for item in deliveries],
            "urls": [item.url for item in deliveries],
            "methods": [item.method for item in deliveries],
            "headers": [Jsonb(dict(item.headers)) for item in deliveries],
            "bodies": [item.body for item in deliveries],
            "due_at": [item.due_at for item in deliveries],
        },
    )
    if wake:
        await claims.notify(conn, CHANNEL)


async def enqueue(
    conn: psycopg.AsyncConnection[Any],
    *,
    url: str,
    body: bytes,
    source: str,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    due_at: datetime | None = None,
    delivery_id: uuid.UUID | None = None,
    transport: str = "http",
) -> uuid.UUID:
    """Queue one delivery in the caller's open transaction; it is sent once that commits.
    The id is the `webhook-id` receivers de-duplicate on."""
    delivery = NewDelivery(
        url=url,
        body=body,
        source=source,
        method=method,
        headers=headers or {},
        due_at=due_at,
        id=delivery_id or uuid.uuid4(),
        transport=transport,
    )
    await enqueue_all(conn, [delivery])
    return delivery.id


@dataclass(frozen=True)
class AttemptRecord:
    id: uuid.UUID
    result: Literal["delivered", "retry", "failed"]
    attempted_at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str | None
    retry_in_s: float | None


async def record_attempts(pool: Pool, owner: str, attempts: list[AttemptRecord]) -> list[bool]:
    """Record a batch of attempts; say of each whether `owner` still held its lease."""
    ids = [item.id for item in attempts]
    params = {
        "owner": owner,
        "kept": ATTEMPTS_KEPT,
        "ids": ids,
        "results": [item.result for item in attempts],
        "attempted_at": [item.attempted_at for item in attempts],
        "status_codes": [item.status_code for item in attempts],
        "latency_ms": [item.latency_ms for item in attempts],
        "errors": [item.error for item in attempts],
        "retry_in_s": [item.retry_in_s for item in attempts],
    }
    async with pool.connection() as conn, conn.transaction():
        await claims.lock_in_id_order(conn, "deliveries", ids)
        cursor = await conn.execute(RECORD_ATTEMPTS, params)
        held = {row["id"] for row in await cursor.fetchall()}
    return [item.id in held for item in attempts]


@dataclass(frozen=True)
class Deferred:
    id: uuid.UUID
    delay_s: float


async def defer(pool: Pool, owner: str, deferred: list[Deferred]) -> list[None]:
    """Put deliveries back for their delays, in one statement."""
    ids = [item.id for item in deferred]
    params = {
        "owner": owner,
        "ids": ids,
        "delays_s": [item.delay_s for item in deferred],
    }
    async with pool.connection() as conn, conn.transaction():
        await claims.lock_in_id_order(conn, "deliveries", ids)
        await conn.execute(DEFER, params)
    return [None] * len(deferred)


async def cancel(conn: psycopg.AsyncConnection[Any], delivery_id: uuid.UUID) -> bool:
    """Cancel a pending delivery nobody is sending; True when this call cancelled it."""
    cursor = await conn.execute(CANCEL, {"id": delivery_id})
    return cursor.rowcount == 1


async def requeue(conn: psycopg.AsyncConnection[Any], delivery_id: uuid.UUID) -> bool:
    """Send a failed delivery again now, with a full round of attempts; True when it was failed."""
    cursor = await conn.execute(REQUEUE, {"id": delivery_id})
    if cursor.rowcount == 1:
        await claims.notify(conn, CHANNEL)
    return cursor.rowcount == 1


async def reschedule(
    conn: psycopg.AsyncConnection[Any], delivery_id: uuid.UUID, due_at: datetime
) -> bool:
    """Move a pending delivery nobody is sending to `due_at`; True when it was moved."""
    cursor = await conn.execute(RESCHEDULE, {"id": delivery_id, "due_at": due_at})
    if cursor.rowcount == 1:
        await claims.notify(conn, CHANNEL)
    return cursor.rowcount == 1


async def list_deliveries(
    pool: Pool,
    *,
    status: Status | None = None,
    source: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; returns a page and the cursor of the next one (None on the last page).
    Raises BadCursor for a cursor that did not come from here."""
    after_created_at, after_id = paging.cursor_position(cursor) if cursor else (None, None)
    params = {
        "status": status,
        "source": source,
        "after_created_at": after_created_at,
        "after_id": after_id,
        "limit": limit + 1,
    }
    async with pool.connection() as conn:
        rows = await (await conn.execute(LIST_DELIVERIES, params)).fetchall()
    return paging.split_page(rows, limit)


async def get_delivery(pool: Pool, delivery_id: uuid.UUID) -> dict[str, Any] | None:
    """One delivery with its logged attempts (newest first), or None."""
    async with pool.connection() as conn:
        delivery = await (await conn.execute(GET_DELIVERY, {"id": delivery_id})).fetchone()
        if delivery is None:
            return None
        attempts = await (await conn.execute(GET_ATTEMPTS, {"id": delivery_id})).fetchall()
    return {**delivery, "attempt_log": attempts}


async def count_by_status(pool: Pool, *, source: str | None = None) -> dict[str, int]:
    """How many deliveries are in each status (every status present, zeros included)."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(COUNT_BY_STATUS, {"source": source})).fetchall()
    counts = dict.fromkeys(("pending", "delivered", "failed", "cancelled"), 0)
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


# Timers' deliveries go with their timers (timers/store.py), under the timers' retention.
EXPIRE_FINISHED_DELIVERIES = """
    DELETE FROM deliveries
     WHERE id IN (
           SELECT id
             FROM deliveries
            WHERE source <> 'timer'
              AND due_at IS NULL
              AND coalesce(delivered_at, scheduled_at) < now() - %(keep)s
            LIMIT %(limit)s
     )
"""


async def expire_finished_deliveries(resources: Resources, limit: int) -> int:
    """Delete up to `limit` finished deliveries (with their attempt logs) older than
    ERRANDS_DELIVERY_RETENTION_DAYS."""
    keep = timedelta(days=resources.settings.delivery_retention_days)
    async with resources.pool.connection() as conn:
        cursor = await conn.execute(EXPIRE_FINISHED_DELIVERIES, {"keep": keep, "limit": limit})
        return cursor.rowcount
