"""The one scheduling core: rows in PostgreSQL are the queue, claimed in batches under a lease.

A claimable table has `id uuid`, `due_at timestamptz` (NULL: nothing to do), `lease_owner text`
and `lease_until timestamptz`. A worker claims due rows whose lease is free or expired, runs each
one in its own task, renews the leases it holds while they run, and on stop releases what it did
not finish; a database that is briefly unreachable is waited out. The feature's handler ends a
row's work with its own SQL (setting `due_at` to NULL or to the next time) guarded by
`lease_owner = owner`, so a worker that lost its lease writes nothing. Delivery is therefore
at-least-once, with the row id as the idempotency key.

No outside effect starts on a lapsed lease. Each row's handler runs with its `Lease` (see
`current_lease()`), timed on this process's monotonic clock from just before the claim or renewal
was sent, so it runs out here no later than in the database; it counts as lapsed a safety margin
before that. The loop checks it before the handler starts, the guarded HTTP client checks it before
every request, and a lapsed lease raises `LeaseLapsed`: the row is dropped unsent and the loop
claims again. A worker paused past its leases (SIGSTOP, a frozen VM) thus wakes to send nothing it
lost; the only window left is a pause longer than the margin between that check and the request.
"""

import asyncio
import contextvars
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import structlog
from psycopg import sql

from errands.core.db import Pool

__all__ = [
    "ClaimQueue",
    "Lease",
    "LeaseLapsed",
    "Row",
    "current_lease",
    "lock_in_id_order",
    "new_owner",
    "notify",
    "run_claim_loop",
]

Row = dict[str, Any]
Handler = Callable[[Row], Awaitable[None]]

log = structlog.get_logger(__name__)

# After a failed claim (the database restarting, a network blip): 0.5 s, 1 s, 2 s, 4 s, 5 s ...
CLAIM_RETRY_BASE_S = 0.5
CLAIM_RETRY_MAX_S = 5.0
# Leases are renewed every third of their length and count as lapsed a quarter before they end,
# so one failed renewal is survived and a second makes the worker stop starting work.
RENEWALS_PER_LEASE = 3
SAFETY_MARGIN_FRACTION = 0.25

# Rows due within the lookahead are claimed too (their handler waits for the due time in memory);
# `claimed_at` is the database's clock as it claimed each row, which that wait is measured
# against. clock_timestamp(), not the statement's now(): the wait is counted from when the answer
# arrived, so it ends late by the time between the two, and a claim of many rows takes
# milliseconds.
CLAIM_DUE = """
    UPDATE {table}
       SET lease_owner = %(owner)s,
           lease_until = now() + %(lease)s
     WHERE id IN (
             SELECT id
               FROM {table}
              WHERE due_at <= now() + %(lookahead)s
                AND (lease_until IS NULL OR lease_until < now())
              ORDER BY due_at
              LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
           )
 RETURNING *, clock_timestamp() AS claimed_at
"""

# A lease that ran out is not revived: the row may have been cancelled or claimed meanwhile.
RENEW_LEASES = """
    UPDATE {table}
       SET lease_until = now() + %(lease)s
     WHERE id = ANY(%(ids)s)
       AND lease_owner = %(owner)s
       AND lease_until > now()
 RETURNING id
"""

# Batch writers of one table lock their rows in id order first: two batches (a renewal and a
# worker's batched record of outcomes) that locked them in scan order could deadlock.
LOCK_ROWS = """
    SELECT id
      FROM {table}
     WHERE id = ANY(%(ids)s)
     ORDER BY id
       FOR UPDATE
"""

RELEASE_LEASES = """
    UPDATE {table}
       SET lease_owner = NULL,
           lease_until = NULL
     WHERE id = ANY(%(ids)s)
       AND lease_owner = %(owner)s
"""

# Rows leased by a live worker are left out: the poll interval covers their lease's expiry.
SECONDS_UNTIL_NEXT_DUE = """
    SELECT extract(epoch FROM due_at - now()) AS seconds
      FROM {table}
     WHERE due_at IS NOT NULL
       AND (lease_until IS NULL OR lease_until < now())
     ORDER BY due_at
     LIMIT 1
"""


def new_owner() -> str:
    """A lease owner name unique to this worker: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseLapsed(Exception):
    """The lease on a row ran out (or nearly): whatever was about to happen for it must not."""


@dataclass
class Lease:
    """A worker's hold on one row, as far as this process can vouch for it."""

    row_id: uuid.UUID
    owner: str
    length_s: float
    # time.monotonic() at which the database's lease may end: the claim or renewal was sent
    # at or after `expires_at - length_s`, and the database added the length to its own now().
    expires_at: float

    @property
    def margin_s(self) -> float:
        return self.length_s * SAFETY_MARGIN_FRACTION

    def remaining_s(self) -> float:
        return self.expires_at - time.monotonic()

    def valid(self) -> bool:
        return self.remaining_s() > self.margin_s

    def check(self) -> None:
        """Raise LeaseLapsed unless the lease holds for at least its safety margin more."""
        if not self.valid():
            raise LeaseLapsed(
                f"lease on {self.row_id} has {self.remaining_s():.1f} s left, under the "
                f"{self.margin_s:.1f} s safety margin"
            )


_current_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "current_lease", default=None
)


def current_lease() -> Lease | None:
    """The lease of the row the running handler works on; None outside a claim loop's handler."""
    return _current_lease.get()


async def lock_in_id_order(
    conn: psycopg.AsyncConnection[Any], table: str, ids: list[uuid.UUID]
) -> None:
    """Lock rows in id order inside the caller's transaction, before a batch UPDATE of them."""
    query = sql.SQL(LOCK_ROWS).format(table=sql.Identifier(table))
    await conn.execute(query, {"ids": ids})


async def notify(conn: psycopg.AsyncConnection[Any], channel: str) -> None:
    """Wake the workers listening on `channel` (sent when the surrounding transaction commits)."""
    await conn.execute("SELECT pg_notify(%s, '')", (channel,))


@dataclass(frozen=True)
class ClaimQueue:
    """One claimable table and how to work it."""

    table: str
    channel: str
    lease: timedelta
    batch_size: int = 100
    max_in_flight: int = 100
    poll_interval_s: float = 1.0
    # Claim rows this long before they are due; the handler waits for the due time itself.
    lookahead: timedelta = timedelta(0)

    def _query(self, template: str) -> sql.Composed:
        return sql.SQL(template).format(table=sql.Identifier(self.table))

    @property
    def lease_s(self) -> float:
        return self.lease.total_seconds()

    async def claim(self, pool: Pool, owner: str, limit: int) -> list[Row]:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                self._query(CLAIM_DUE),
                {
                    "owner": owner,
                    "lease": self.lease,
                    "limit": limit,
                    "lookahead": self.lookahead,
                },
            )
            return await cursor.fetchall()

    async def renew(self, pool: Pool, owner: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Extend the leases `owner` still holds; return the ids renewed."""
        async with pool.connection() as conn, conn.transaction():
            await lock_in_id_order(conn, self.table, ids)
            cursor = await conn.execute(
                self._query(RENEW_LEASES), {"owner": owner, "lease": self.lease, "ids": ids}
            )
            return {row["id"] for row in await cursor.fetchall()}

    async def release(self, pool: Pool, owner: str, ids: list[uuid.UUID]) -> None:
        async with pool.connection() as conn:
            await conn.execute(self._query(RELEASE_LEASES), {"owner": owner, "ids": ids})

    async def seconds_until_next_due(self, pool: Pool) -> float | None:
        async with pool.connection() as conn:
            cursor = await conn.execute(self._query(SECONDS_UNTIL_NEXT_DUE))
            row = await cursor.fetchone()
        return None if row is None else float(row["seconds"])


class _Wakeup:
    """Set on every NOTIFY on one channel, from a dedicated LISTEN connection."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.event = asyncio.Event()

    async def listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.event.set()  # anything sent while we were not listening: look now
                    async for _ in conn.notifies():
                        self.event.set()
            except psycopg.OperationalError as error:
                log.warning("listen_connection_lost", channel=self.channel, error=str(error))
                await asyncio.sleep(1.0)


async def run_claim_loop(
    queue: ClaimQueue,
    pool: Pool,
    url: str,
    handle: Handler,
    stop: asyncio.Event,
    *,
    owner: str | None = None,
    grace_s: float = 20.0,
) -> None:
    """Claim due rows and run `handle` on each, at most `max_in_flight` at once, until `stop`.

    Each handler runs with its row's lease as `current_lease()`; a row whose lease lapsed before or
    during its handler (LeaseLapsed) is dropped, and the freed place is claimed again.

    A claim that fails for want of the database is tried again after a short back-off. On stop:
    claim nothing more, give running handlers `grace_s` to finish (their leases still renewed),
    then cancel the rest and release their leases so another worker takes them at once.
    """
    owner = owner or new_owner()
    wakeup = _Wakeup(url, queue.channel)
    running: dict[asyncio.Task[None], Lease] = {}

    async def run_one(row: Row, lease: Lease, answered_at: float) -> None:
        _current_lease.set(lease)
        try:
            if (wait_s := _seconds_until_due(row, answered_at)) > 0:
                await asyncio.sleep(wait_s)  # claimed within the lookahead: wait in memory
            lease.check()
            await handle(row)
        except LeaseLapsed as lapsed:
            log.info(
                "lease_lapsed_row_dropped", table=queue.table, id=str(row["id"]), reason=str(lapsed)
            )
        except Exception:
            # The row stays leased and is tried again when the lease runs out; the error is a
            # bug in the handler, logged with its traceback rather than swallowed.
            log.exception("claim_handler_failed", table=queue.table, id=str(row["id"]))

    async def renew_leases() -> None:
        while True:
            await asyncio.sleep(queue.lease_s / RENEWALS_PER_LEASE)
            if not running:
                continue
            leases = list(running.values())
            sent_at = time.monotonic()
            try:
                renewed = await queue.renew(pool, owner, [lease.row_id for lease in leases])
            except psycopg.OperationalError as error:
                # The leases last two more rounds: the next renewal may find the database back.
                log.warning("lease_renewal_failed", table=queue.table, error=str(error))
                continue
            for lease in leases:
                if lease.row_id in renewed:
                    lease.expires_at = sent_at + queue.lease_s

    listener = asyncio.create_task(wakeup.listen(), name=f"listen:{queue.channel}")
    renewer = asyncio.create_task(renew_leases(), name=f"renew:{queue.table}")
    failed_claims = 0
    try:
        while not stop.is_set():
            wakeup.event.clear()
            free = queue.max_in_flight - len(running)
            if free <= 0:
                await _first_of([*running, stop.wait()])
                continue
            limit = min(free, queue.batch_size)
            claimed_at = time.monotonic()
            try:
                rows = await queue.claim(pool, owner, limit)
            except psycopg.OperationalError as error:
                failed_claims += 1
                delay_s = _claim_retry_delay_s(failed_claims)
                log.warning("claim_failed", table=queue.table, error=str(error), retry_in_s=delay_s)
                await _first_of([stop.wait()], within_s=delay_s)
                continue
            failed_claims = 0
            # The database's clock read the rows' due times between these two instants: a wait
            # counted from the later one never ends early.
            answered_at = time.monotonic()
            for row in rows:
                lease = Lease(row["id"], owner, queue.lease_s, claimed_at + queue.lease_s)
                task = asyncio.create_task(
                    run_one(row, lease, answered_at), name=f"{queue.table}:{row['id']}"
                )
                running[task] = lease
                task.add_done_callback(running.pop)
            if len(rows) < limit:
                await _sleep_until_work(queue, pool, wakeup.event, stop)
    finally:
        listener.cancel()
        # Renewing goes on while handlers finish within the grace: a lease that ran out would
        # let another worker start the same row.
        await _finish_or_release(queue, pool, owner, running, grace_s)
        renewer.cancel()
        await asyncio.gather(listener, renewer, return_exceptions=True)


def _seconds_until_due(row: Row, answered_at: float) -> float:
    """How long until a claimed row is due: by the database's clock at the claim, carried
    forward on this process's monotonic clock from when the claim's answer arrived."""
    until_due_at_claim = (row["due_at"] - row["claimed_at"]).total_seconds()
    return float(until_due_at_claim - (time.monotonic() - answered_at))


def _claim_retry_delay_s(failed_claims: int) -> float:
    return min(CLAIM_RETRY_BASE_S * 2.0 ** min(failed_claims - 1, 8), CLAIM_RETRY_MAX_S)


async def _first_of(awaitables: list[Awaitable[Any]], within_s: float | None = None) -> None:
    """Wait until any of `awaitables` is done or `within_s` seconds pass.

    Waits made here from coroutines are cancelled afterwards; tasks passed in keep running.
    """
    futures = [asyncio.ensure_future(item) for item in awaitables]
    try:
        await asyncio.wait(futures, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, item in zip(futures, awaitables, strict=True):
            if future is not item:
                future.cancel()


async def _sleep_until_work(
    queue: ClaimQueue, pool: Pool, wakeup: asyncio.Event, stop: asyncio.Event
) -> None:
    """Sleep until the next row is due, a NOTIFY arrives, the poll interval passes, or stop."""
    delay = queue.poll_interval_s
    try:
        next_due = await queue.seconds_until_next_due(pool)
    except psycopg.OperationalError:
        next_due = None  # the claim that follows meets the same trouble, and backs off
    if next_due is not None:
        delay = min(delay, next_due - queue.lookahead.total_seconds())
    # A due row we could not claim is locked by another worker's claim: look again shortly.
    await _first_of([wakeup.wait(), stop.wait()], within_s=max(delay, 0.005))


async def _finish_or_release(
    queue: ClaimQueue,
    pool: Pool,
    owner: str,
    running: dict[asyncio.Task[None], Lease],
    grace_s: float,
) -> None:
    if running:
        await asyncio.wait(list(running), timeout=grace_s)
    unfinished = dict(running)
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    if not unfinished:
        return
    try:
        await queue.release(pool, owner, [lease.row_id for lease in unfinished.values()])
    except psycopg.OperationalError as error:
        # Stopping still succeeds: the leases run out and another worker takes the rows then.
        log.warning(
            "leases_not_released", table=queue.table, count=len(unfinished), error=str(error)
        )
        return
    log.info("leases_released", table=queue.table, count=len(unfinished))
