"""The background loops a process can run, and the supervisor that runs a set of them."""

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from datetime import timedelta
from typing import Any

import structlog

from errands.conversions.store import expire_orphaned_files, expire_uploads
from errands.conversions.supervisor import abandoned_write_age_s, convert_uploaded_files
from errands.core.delivery import deliver_webhooks
from errands.core.delivery.store import expire_finished_deliveries
from errands.core.resources import Resources
from errands.core.storage import StorageUnavailable
from errands.core.sweeper import Expiry, run_sweeper
from errands.monitors.checker import run_checker
from errands.monitors.sink import run_sink
from errands.stats.store import expire_stats
from errands.timers.store import expire_finished_timers
from errands.timers.upkeep import keep_timers

__all__ = ["EXPIRIES", "LOOPS", "run_loops"]

Loop = Callable[[Resources, asyncio.Event], Coroutine[Any, Any, None]]

log = structlog.get_logger(__name__)


async def expire_finished_uploads(resources: Resources, limit: int) -> int:
    """Finished uploads past their retention, with their stored files."""
    retention = timedelta(days=resources.settings.upload_retention_days)
    return await expire_uploads(resources.pool, resources.storage, retention, limit)


async def expire_abandoned_writes(resources: Resources, limit: int) -> int:
    """What writes to the storage left behind (partial files and unfinished multipart uploads
    whose process died, files of uploads that never got their row); never a write in progress.
    One pass over the storage, whatever `limit`. A storage out of reach waits for the next
    sweep."""
    age_s = abandoned_write_age_s(resources.settings)
    try:
        partial = await resources.storage.sweep_abandoned_writes(age_s)
        return partial + await expire_orphaned_files(resources.pool, resources.storage, age_s)
    except StorageUnavailable as error:
        log.warning("sweep_failed", expiry="abandoned writes", error=str(error))
        return 0


# Each feature's own expiry of what its retention settings let go, applied by the sweeper.
EXPIRIES: dict[str, Expiry] = {
    "stats": expire_stats,
    "timers": expire_finished_timers,
    "deliveries": expire_finished_deliveries,
    "uploads": expire_finished_uploads,
    "abandoned writes": expire_abandoned_writes,
}


async def sweep_expired(resources: Resources, stop: asyncio.Event) -> None:
    await run_sweeper(resources, EXPIRIES, stop)


# Each loop runs until the stop event is set, then finishes or releases what it holds.
LOOPS: dict[str, Loop] = {
    "deliveries": deliver_webhooks,
    "timers": keep_timers,
    "monitors": run_checker,
    "conversions": convert_uploaded_files,
    "sink": run_sink,
    "sweeper": sweep_expired,
}


async def run_loops(resources: Resources, names: Iterable[str], stop: asyncio.Event) -> None:
    """Run the named loops until `stop`; the first to fail stops the others and is re-raised."""
    tasks = [asyncio.create_task(LOOPS[name](resources, stop), name=name) for name in names]
    if not tasks:
        return
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [task for task in done if not task.cancelled() and task.exception()]
    if failed:
        log.error("loop_failed", loop=failed[0].get_name(), error=repr(failed[0].exception()))
        stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        raise failed[0].exception()  # type: ignore[misc]
