"""The "timers" loop: keeps `errands_timers_pending` current. Timers' webhooks are sent by the
"deliveries" loop, which every process running this one also runs."""

import asyncio

import psycopg
import structlog

from errands.core.metrics import TIMERS_PENDING
from errands.core.resources import Resources
from errands.timers import store

__all__ = ["keep_timers"]

log = structlog.get_logger(__name__)

PENDING_COUNT_INTERVAL_S = 5.0


async def keep_timers(resources: Resources, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            TIMERS_PENDING.set(await store.count_pending(resources.pool))
        except psycopg.OperationalError as error:
            # The gauge keeps its last value; the next count may find the database back.
            log.warning("timers_pending_count_failed", error=str(error))
        try:
            await asyncio.wait_for(stop.wait(), PENDING_COUNT_INTERVAL_S)
        except TimeoutError:
            continue
