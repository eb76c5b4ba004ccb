"""The sweeper: one loop that applies every retention setting by calling each feature's own
expiry function, so nothing grows for ever. The features register theirs in `loops.py`.

Each expiry is a row of `sweeps` on the scheduling core, due when it should run next: any number
of processes may run the sweeper, and the one that claims an expiry's row runs it, then moves it
to the next interval. Each expiry thus runs once per ERRANDS_SWEEP_INTERVAL_S, not once per
process."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

import psycopg
import structlog

from errands.core import claims
from errands.core.resources import Resources

__all__ = ["Expiry", "run_expiry", "run_sweeper"]

log = structlog.get_logger(__name__)

# An expiry removes expired things (at most `limit` rows, with their files) and says how many;
# it is called again while it removes a full batch, so no statement holds locks for long.
Expiry = Callable[[Resources, int], Awaitable[int]]

SWEEP_BATCH = 1000

# Renewed while an expiry runs, so a long sweep keeps it; a sweeper that dies mid-sweep leaves
# the expiry to another after this long.
SWEEP_LEASE = timedelta(minutes=1)
REGISTER_RETRY_S = 5.0

# Every expiry this version knows has its row, due now when new. An interval made shorter takes
# effect at once rather than after the longer one.
ENSURE_SWEEPS = """
    INSERT INTO sweeps (name, due_at)
    SELECT name, now() FROM unnest(%(names)b::text[]) AS name
        ON CONFLICT (name) DO UPDATE
       SET due_at = LEAST(sweeps.due_at, now() + %(interval)s)
"""

# Guarded by the lease like every claimed row's last write: a sweeper that lost it writes nothing.
SWEPT = """
    UPDATE sweeps
       SET due_at = now() + %(interval)s,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""


async def run_expiry(resources: Resources, expire: Expiry) -> int:
    """Call `expire` until nothing expired is left; how many it removed."""
    removed = 0
    while (batch := await expire(resources, SWEEP_BATCH)) >= SWEEP_BATCH:
        removed += batch
    return removed + batch


async def run_sweeper(
    resources: Resources, expiries: Mapping[str, Expiry], stop: asyncio.Event
) -> None:
    """Run each expiry now (when no process ran it lately) and every ERRANDS_SWEEP_INTERVAL_S,
    until `stop`."""
    interval = timedelta(seconds=resources.settings.sweep_interval_s)
    owner = claims.new_owner()
    queue = claims.ClaimQueue(
        table="sweeps",
        channel="sweeps",
        lease=SWEEP_LEASE,
        batch_size=len(expiries),
        max_in_flight=len(expiries),
        poll_interval_s=interval.total_seconds(),
    )

    async def sweep(row: claims.Row) -> None:
        name = row["name"]
        expire = expiries.get(name)
        try:
            # A name only another version of Errands knows is that version's to run.
            removed = 0 if expire is None else await run_expiry(resources, expire)
            async with resources.pool.connection() as conn:
                await conn.execute(SWEPT, {"id": row["id"], "owner": owner, "interval": interval})
        except psycopg.OperationalError as error:
            # The row's lease runs out, and the expiry is run again then.
            log.warning("sweep_failed", expiry=name, error=str(error))
            return
        if removed:
            log.info("swept", expiry=name, removed=removed)

    while True:
        try:
            async with resources.pool.connection() as conn:
                await conn.execute(ENSURE_SWEEPS, {"names": list(expiries), "interval": interval})
            break
        except psycopg.OperationalError as error:
            log.warning("sweeps_not_registered", error=str(error), retry_in_s=REGISTER_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REGISTER_RETRY_S)
            if stop.is_set():
                return
    await claims.run_claim_loop(
        queue,
        resources.pool,
        resources.database_url,
        sweep,
        stop,
        owner=owner,
        grace_s=resources.settings.shutdown_grace_s,
    )
