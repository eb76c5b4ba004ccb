"""The sweeper: one loop that applies every retention setting by calling each feature's own
expiry function, so nothing grows for ever. The features register theirs in `loops.py`."""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping

import psycopg
import structlog

from errands.core.resources import Resources

__all__ = ["Expiry", "run_sweeper", "sweep_once"]

log = structlog.get_logger(__name__)

# An expiry removes at most `limit` expired things (rows, with their files) and says how many;
# it is called again while it removes a full batch, so no statement holds locks for long.
Expiry = Callable[[Resources, int], Awaitable[int]]

SWEEP_BATCH = 1000


async def sweep_once(resources: Resources, expiries: Mapping[str, Expiry]) -> dict[str, int]:
    """Run every expiry until nothing expired is left; how many each removed. One that fails for
    want of the database is logged and left to the next sweep, without holding up the others."""
    removed: dict[str, int] = {}
    for name, expire in expiries.items():
        removed[name] = 0
        try:
            while (batch := await expire(resources, SWEEP_BATCH)) > 0:
                removed[name] += batch
                if batch < SWEEP_BATCH:
                    break
        except psycopg.OperationalError as error:
            log.warning("sweep_failed", expiry=name, error=str(error))
    return removed


async def run_sweeper(
    resources: Resources, expiries: Mapping[str, Expiry], stop: asyncio.Event
) -> None:
    """Sweep now and every ERRANDS_SWEEP_INTERVAL_S until `stop`."""
    interval_s = resources.settings.sweep_interval_s
    while not stop.is_set():
        started = time.monotonic()
        removed = await sweep_once(resources, expiries)
        if any(removed.values()):
            log.info("swept", **removed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(interval_s - (time.monotonic() - started), 0))
