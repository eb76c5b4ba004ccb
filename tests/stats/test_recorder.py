"""A process's counts survive a database that cannot be reached and are added once it can."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from errands.core.db import Pool
from errands.stats.recorder import StatsRecorder
from errands.stats.store import read_totals


class UnreachablePool:
    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        raise psycopg.OperationalError("connection refused")
        yield


async def test_counts_kept_through_a_failed_flush_are_added_later(pool: Pool) -> None:
    recorder = StatsRecorder("p1")
    recorder.record("GET", "/a", 10.0, failed=False)
    await recorder.flush(UnreachablePool())  # type: ignore[arg-type]
    recorder.record("GET", "/a", 30.0, failed=True)

    await recorder.flush(pool)

    async with pool.connection() as conn:
        [totals] = await read_totals(conn, None)
    assert (totals.count, totals.errors, totals.sum_ms) == (2, 1, 40.0)
