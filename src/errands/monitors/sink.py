"""The sink loop: read check results from the bus in batches and store them, then commit.

Each batch is stored (rows and rollups in one transaction) before its offsets are committed, so
a sink killed at any point reads the uncommitted batch again, and storing it again adds nothing.
"""

import asyncio
import time
from contextlib import aclosing, suppress
from datetime import UTC, date, datetime, timedelta

import psycopg
import structlog

from errands.core.metrics import SINK_LAG, SINK_ROWS
from errands.core.resources import Resources
from errands.monitors import store

__all__ = ["DAYS_AHEAD", "run_sink", "store_batch"]

log = structlog.get_logger(__name__)

# Partitions exist this many days ahead, so a batch at midnight never waits for DDL.
DAYS_AHEAD = 2
HOUSEKEEPING_INTERVAL_S = 3600.0
RETRY_DELAY_S = 1.0


async def store_batch(
    resources: Resources, values: list[bytes], known_days: set[date] | None = None
) -> store.StoredBatch:
    """Store one batch of messages. Results older than retention (their partition is gone or
    about to be) or dated more than a day ahead (a wrong clock must not create far-future
    partitions) are left out, as are malformed messages: storing nothing for a bad message
    beats blocking every message behind it."""
    now = datetime.now(UTC)
    batch = await store.save_checks(
        resources.pool,
        values,
        oldest=now - timedelta(days=resources.settings.retention_days),
        newest=now + timedelta(days=1),
        known_days=set() if known_days is None else known_days,
    )
    if batch.skipped:
        log.warning("check_messages_skipped", count=batch.skipped, batch=len(values))
    return batch


async def _housekeeping(resources: Resources, known_days: set[date]) -> float:
    """Create the coming days' partitions and drop the expired ones; return the seconds until
    the next run. An unreachable database only delays it: partitions are also made on demand."""
    today = datetime.now(UTC).date()
    known_days.clear()  # another sink may have dropped some
    ahead = {today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)}
    cutoff = today - timedelta(days=resources.settings.retention_days)
    try:
        await store.ensure_partitions(resources.pool, ahead)
        known_days |= ahead
        dropped = await store.drop_expired(resources.pool, cutoff)
    except psycopg.OperationalError as error:
        log.warning("sink_housekeeping_failed", error=str(error))
        return RETRY_DELAY_S
    if dropped:
        log.info("check_partitions_dropped", partitions=dropped)
    return HOUSEKEEPING_INTERVAL_S


async def _store_or_stop(
    resources: Resources, values: list[bytes], known_days: set[date], stop: asyncio.Event
) -> store.StoredBatch | None:
    """Store a batch, trying again while the database is unreachable; None when `stop` comes
    first, leaving the batch uncommitted for the next sink to read again."""
    while True:
        try:
            return await store_batch(resources, values, known_days)
        except psycopg.OperationalError as error:
            log.warning("sink_store_failed", error=str(error))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_DELAY_S)
        if stop.is_set():
            return None


async def run_sink(resources: Resources, stop: asyncio.Event) -> None:
    """Loop "sink": store check results from the bus until `stop`."""
    settings = resources.settings
    known_days: set[date] = set()
    next_housekeeping = time.monotonic() + await _housekeeping(resources, known_days)
    batches = resources.bus.consume(stop, max_messages=settings.sink_batch_size)
    async with aclosing(batches):
        async for batch in batches:
            if batch.messages:
                values = [message.value for message in batch.messages]
                stored = await _store_or_stop(resources, values, known_days, stop)
                if stored is None:
                    return
                await batch.commit()
                SINK_ROWS.inc(stored.stored)
            for partition, lag in batch.lag.items():
                SINK_LAG.labels(partition=str(partition)).set(lag)
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + await _housekeeping(resources, known_days)
