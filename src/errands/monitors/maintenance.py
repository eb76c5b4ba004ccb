"""Maintenance windows: while one is open, checks go on and state changes are recorded, but no
channel is notified. A window is one-off (starts_at to ends_at) or recurring (a cron expression
in UTC, each time lasting duration_s, from starts_at on and until ends_at if given). The
routes are in api.py; this module is what the sink and the uptime answers compute with."""

import itertools
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from errands.core.validation import RequestBody

__all__ = [
    "MaintenanceIn",
    "MaintenanceWindow",
    "covers",
    "maintenance_seconds",
    "utc",
]

MAX_DURATION_S = 7 * 24 * 3600
# A recurring window opens at most this often, which bounds the work of counting maintenance
# time over a long uptime window.
MIN_RECURRENCE = timedelta(hours=1)
RECURRENCE_PROBES = 50
Window = dict[str, Any]


def _cron_starts(window: Window, after: datetime) -> Iterator[datetime]:
    """The times a recurring window opens, from the first one after `after` on."""
    yield from CronSim(window["cron"], max(after, window["starts_at"] - timedelta(minutes=1)))


def _spans(window: Window, since: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The [start, end) times the window is open that overlap [since, until)."""
    first, last = window["starts_at"], window["ends_at"]
    if window["cron"] is None:
        if first < until and last > since:
            yield first, last
        return
    duration = timedelta(seconds=window["duration_s"])
    for start in _cron_starts(window, since - duration):
        if start >= until or (last is not None and start >= last):
            return
        end = start + duration if last is None else min(start + duration, last)
        if end > since:
            yield start, end


def _applies(window: Window, monitor_id: uuid.UUID) -> bool:
    return window["monitor_ids"] is None or monitor_id in window["monitor_ids"]


def covers(windows: Sequence[Window], monitor_id: uuid.UUID, at: datetime) -> bool:
    """Whether any window holds the monitor's notifications at `at`."""
    moment = at + timedelta(microseconds=1)
    return any(
        _applies(window, monitor_id) and any(_spans(window, at, moment)) for window in windows
    )


def maintenance_seconds(
    windows: Sequence[Window], monitor_id: uuid.UUID, since: datetime, until: datetime
) -> float:
    """How much of [since, until) the monitor spent in maintenance (overlaps counted once)."""
    spans = sorted(
        (max(start, since), min(end, until))
        for window in windows
        if _applies(window, monitor_id)
        for start, end in _spans(window, since, until)
    )
    total = timedelta()
    open_start: datetime | None = None
    open_end = since
    for start, end in spans:
        if open_start is None or start > open_end:
            if open_start is not None:
                total += open_end - open_start
            open_start, open_end = start, end
        else:
            open_end = max(open_end, end)
    if open_start is not None:
        total += open_end - open_start
    return total.total_seconds()


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class MaintenanceIn(RequestBody):
    """A one-off window (`starts_at`, `ends_at`) or a recurring one (`cron`, `duration_s`, from
    `starts_at` or now, until `ends_at` if given)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "monitors": "all",
                    "starts_at": "2026-12-02T01:00:00Z",
                    "ends_at": "2026-12-02T02:00:00Z",
                },
                {
                    "monitors": ["0b7c1f4e-2d3a-4c5b-8e9f-1a2b3c4d5e6f"],
                    "cron": "0 3 * * 0",
                    "duration_s": 3600,
                },
            ]
        },
    )

    monitors: list[uuid.UUID] | Literal["all"] = Field(
        description='Monitor ids, or "all" for every monitor, present and future'
    )
    starts_at: datetime | None = Field(default=None, description="ISO 8601; UTC if no offset")
    ends_at: datetime | None = Field(default=None, description="ISO 8601; UTC if no offset")
    cron: str | None = Field(
        default=None, min_length=9, max_length=200, description="Five fields, in UTC"
    )
    duration_s: int | None = Field(default=None, ge=60, le=MAX_DURATION_S)

    @field_validator("monitors")
    @classmethod
    def some_monitors(cls, value: list[uuid.UUID] | str) -> list[uuid.UUID] | str:
        if isinstance(value, list) and not 1 <= len(value) <= 1000:
            raise ValueError('give 1 to 1000 monitor ids, or "all"')
        return value

    @model_validator(mode="after")
    def one_form(self) -> "MaintenanceIn":
        if self.cron is None:
            if self.duration_s is not None:
                raise ValueError("duration_s goes with cron; a one-off window has ends_at")
            if self.starts_at is None or self.ends_at is None:
                raise ValueError("a one-off window needs starts_at and ends_at (or use cron)")
            if utc(self.ends_at) <= utc(self.starts_at):
                raise ValueError("ends_at must be after starts_at")
            return self
        if self.duration_s is None:
            raise ValueError("a recurring window needs duration_s")
        try:
            opens = CronSim(self.cron, datetime.now(UTC))
            times = [next(opens) for _ in range(RECURRENCE_PROBES)]
        except (CronSimError, StopIteration):
            raise ValueError(f"cron {self.cron!r} is not a valid five-field expression") from None
        if any(later - earlier < MIN_RECURRENCE for earlier, later in itertools.pairwise(times)):
            raise ValueError("a recurring window may open at most once an hour")
        if self.starts_at and self.ends_at and utc(self.ends_at) <= utc(self.starts_at):
            raise ValueError("ends_at must be after starts_at")
        return self


class MaintenanceWindow(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "4f2b9a71-8d3c-4e5f-a6b7-c8d9e0f1a2b3",
                    "monitors": "all",
                    "starts_at": "2026-12-02T01:00:00Z",
                    "ends_at": "2026-12-02T02:00:00Z",
                    "cron": None,
                    "duration_s": None,
                    "created_at": "2026-12-01T23:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    monitors: list[uuid.UUID] | Literal["all"]
    starts_at: datetime
    ends_at: datetime | None
    cron: str | None
    duration_s: int | None
    created_at: datetime
