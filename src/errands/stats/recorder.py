"""Counting API calls: each answered request is added to this process's minute totals, and a
flusher adds those totals to the database every few seconds and at shutdown."""

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import structlog

from errands.core.db import Pool
from errands.core.timing import FinishedRequest
from errands.stats.histogram import BIN_COUNT, bin_of
from errands.stats.store import MinuteTotals, add_minutes, fold_old_minutes

__all__ = ["OPERATIONAL_PATHS", "StatsRecorder", "flush_stats_until"]

log = structlog.get_logger(__name__)

# Probes and scrapes are not API use; counting them would drown the routes people call.
OPERATIONAL_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
# Minute rows are kept this long (GET /stats reads the last hour), then folded into days.
KEEP_MINUTES_FOR = timedelta(hours=2)
FOLD_EVERY_S = 600.0


@dataclass
class _Minute:
    count: int = 0
    errors: int = 0
    sum_ms: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * BIN_COUNT)

    def add(self, other: "_Minute") -> None:
        self.count += other.count
        self.errors += other.errors
        self.sum_ms += other.sum_ms
        self.histogram = [
            mine + theirs for mine, theirs in zip(self.histogram, other.histogram, strict=True)
        ]


_Key = tuple[str, str, int]  # method, route template, minute (seconds since the epoch)


class StatsRecorder:
    """This process's not-yet-flushed counts per (method, route, minute)."""

    def __init__(self, process: str | None = None) -> None:
        # Unique per process start, so a restarted process never adds to a dead one's rows.
        self.process = process or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pending: dict[_Key, _Minute] = {}
        self._flushing = asyncio.Lock()

    def record(self, method: str, route: str, duration_ms: float, failed: bool) -> None:
        minute = int(time.time()) // 60 * 60
        totals = self._pending.get((method, route, minute))
        if totals is None:
            totals = self._pending[(method, route, minute)] = _Minute()
        totals.count += 1
        totals.errors += failed
        totals.sum_ms += duration_ms
        totals.histogram[bin_of(duration_ms)] += 1

    def observe(self, finished: FinishedRequest) -> None:
        """Count a request to an API route under its template (`/timer/{id}`, not each id),
        with status >= 400 counted as an error; probes and unmatched paths are not counted."""
        if finished.route is not None and finished.route not in OPERATIONAL_PATHS:
            self.record(
                finished.method,
                finished.route,
                finished.duration_s * 1000,
                failed=finished.status >= 400,
            )

    async def flush(self, pool: Pool) -> None:
        """Add what was counted to the database; on failure keep it for the next try."""
        async with self._flushing:
            taken, self._pending = self._pending, {}
            if not taken:
                return
            try:
                async with pool.connection() as conn:
                    await add_minutes(conn, self.process, [_row(k, v) for k, v in taken.items()])
            except psycopg.Error as error:
                log.warning("stats_flush_failed", error=str(error), minutes=len(taken))
                for key, totals in taken.items():
                    self._pending.setdefault(key, _Minute()).add(totals)


def _row(key: _Key, totals: _Minute) -> MinuteTotals:
    method, route, minute = key
    last = max((i for i, n in enumerate(totals.histogram) if n), default=-1)
    return MinuteTotals(
        method=method,
        route=route,
        minute=datetime.fromtimestamp(minute, UTC),
        count=totals.count,
        errors=totals.errors,
        sum_ms=totals.sum_ms,
        # Trailing empty bins are implied; most requests are fast, so this keeps rows short.
        histogram=totals.histogram[: last + 1],
    )


async def flush_stats_until(
    recorder: StatsRecorder, pool: Pool, interval_s: float, stop: asyncio.Event
) -> None:
    """Flush every `interval_s` until `stop`, then once more; fold old minutes now and then."""
    next_fold = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        await recorder.flush(pool)
        if started >= next_fold:
            next_fold = started + FOLD_EVERY_S
            try:
                async with pool.connection() as conn:
                    await fold_old_minutes(conn, datetime.now(UTC) - KEEP_MINUTES_FOR)
            except psycopg.Error as error:
                log.warning("stats_fold_failed", error=str(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(interval_s - (time.monotonic() - started), 0))
    await recorder.flush(pool)
