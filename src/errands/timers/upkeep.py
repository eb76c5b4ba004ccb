"""The "timers" loop: fires recurring schedules (each occurrence becomes a delivery) and keeps
`errands_timers_pending` current. Timers' own webhooks are sent by the "deliveries" loop, which
every process running this one also runs."""

import asyncio
import functools
from datetime import timedelta

import psycopg
import structlog

from errands.core import claims
from errands.core.metrics import TIMERS_PENDING
from errands.core.resources import Resources
from errands.timers import store
from errands.timers.schedules import fire_schedule

__all__ = ["keep_timers"]

log = structlog.get_logger(__name__)

PENDING_COUNT_INTERVAL_S = 5.0
SCHEDULE_POLL_INTERVAL_S = 1.0
SCHEDULE_BATCH_SIZE = 100


async def _count_pending(resources: Resources, stop: asyncio.Event) -> None:
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


async def keep_timers(resources: Resources, stop: asyncio.Event) -> None:
    settings = resources.settings
    owner = claims.new_owner()
    queue = claims.ClaimQueue(
        table="schedules",
        channel=store.SCHEDULES_CHANNEL,
        lease=timedelta(seconds=settings.schedule_lease_s),
        batch_size=SCHEDULE_BATCH_SIZE,
        max_in_flight=SCHEDULE_BATCH_SIZE,
        poll_interval_s=SCHEDULE_POLL_INTERVAL_S,
    )
    counting = asyncio.create_task(_count_pending(resources, stop), name="timers:count-pending")
    try:
        await claims.run_claim_loop(
            queue,
            resources.pool,
            resources.database_url,
            functools.partial(fire_schedule, resources, owner),
            stop,
            owner=owner,
            grace_s=settings.shutdown_grace_s,
        )
    finally:
        counting.cancel()
        await asyncio.gather(counting, return_exceptions=True)
