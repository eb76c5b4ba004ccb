"""The sink loop: read check results from the bus in batches and store them, then commit.

Each batch is stored (rows and rollups in one transaction) before its offsets are committed, so
a sink killed at any point reads the uncommitted batch again, and storing it again adds nothing.
"""

import asyncio
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
import structlog

from errands.core.metrics import SINK_LAG, SINK_ROWS
from errands.core.resources import Resources
from errands.monitors import store
from errands.monitors.results import CheckResult, InvalidCheckMessage, decode_check

__all__ = ["DAYS_AHEAD", "run_sink", "store_batch"]

log = structlog.get_logger(__name__)

# Partitions exist this many days ahead, so a batch at midnight never waits for DDL.
DAYS_AHEAD = 2
HOUSEKEEPING_INTERVAL_S = 3600.0
RETRY_DELAY_S = 1.0


class _Partitions:
    """The day partitions this sink knows exist; a day not seen yet is created on demand."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    async def ensure(self, resources: Resources, days: set[date]) -> None:
        missing = days - self.known
        if missing:
            await store.ensure_partitions(resources.pool, missing)
            self.known |= missing


def _accepted(results: list[CheckResult], retention_days: int) -> list[CheckResult]:
    """Leave out results older than retention (their partition is gone or about to be) or
    dated more than a day ahead (a wrong clock must not create far-future partitions)."""
    now = datetime.now(UTC)
    oldest = now - timedelta(days=retention_days)
    newest = now + timedelta(days=1)
    kept = [result for result in results if oldest <= result.checked_at <= newest]
    if len(kept) < len(results):
        log.warning("checks_out_of_range_skipped", count=len(results) - len(kept))
    return kept


async def store_batch(
    resources: Resources, values: list[bytes], partitions: "_Partitions | None" = None
) -> int:
    """Decode, validate and store one batch of messages; return how many rows were new."""
    results = []
    for value in values:
        try:
            results.append(decode_check(value))
        except InvalidCheckMessage as error:
            # Storing nothing for a bad message beats blocking every message behind it.
            log.warning(
                "check_message_skipped",
                error=str(error),
                value=value[:200].decode("utf-8", errors="replace"),
            )
    results = _accepted(results, resources.settings.retention_days)
    if not results:
        return 0
    partitions = partitions or _Partitions()
    await partitions.ensure(resources, {result.checked_at.date() for result in results})
    return await store.save_checks(resources.pool, results)


async def _housekeeping(resources: Resources, partitions: _Partitions) -> None:
    """Create the coming days' partitions and drop the expired ones."""
    today = datetime.now(UTC).date()
    partitions.known.clear()  # another sink may have dropped some
    await partitions.ensure(resources, {today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)})
    cutoff = today - timedelta(days=resources.settings.retention_days)
    dropped = await store.drop_expired(resources.pool, cutoff)
    if dropped:
        log.info("check_partitions_dropped", partitions=dropped)


async def run_sink(resources: Resources, stop: asyncio.Event) -> None:
    """Loop "sink": store check results from the bus until `stop`."""
    settings = resources.settings
    partitions = _Partitions()
    await _housekeeping(resources, partitions)
    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL_S
    async for batch in resources.bus.consume(
        stop, max_messages=settings.sink_batch_size, linger_s=settings.sink_linger_s
    ):
        values = [message.value for message in batch.messages]
        while True:
            try:
                inserted = await store_batch(resources, values, partitions)
                break
            except psycopg.OperationalError as error:
                # The database is unreachable: keep the batch and try again; nothing is
                # committed on the bus until it is stored.
                log.warning("sink_store_failed", error=str(error))
                partitions.known.clear()
                await asyncio.sleep(RETRY_DELAY_S)
        await batch.commit()
        SINK_ROWS.inc(inserted)
        for partition, lag in batch.lag.items():
            SINK_LAG.labels(partition=str(partition)).set(lag)
        if time.monotonic() >= next_housekeeping:
            await _housekeeping(resources, partitions)
            next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL_S
