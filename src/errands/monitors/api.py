"""Monitor routes: register websites to check, and read their checks and uptime."""

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
import regex
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from errands.core.errors import Conflict, NotFound, Unprocessable
from errands.core.http import BlockedTarget, GuardedClient
from errands.core.openapi import answer, request_example
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody
from errands.monitors import store

__all__ = [
    "Check",
    "Monitor",
    "MonitorChanges",
    "MonitorIn",
    "Uptime",
    "parse_window",
    "router",
    "validated_fields",
]

router = APIRouter(tags=["monitors"])

MAX_URL_LENGTH = 2048
MAX_REGEX_LENGTH = 1000
MAX_INTERVAL_S = 7 * 24 * 3600
MAX_TIMEOUT_S = 60.0
DEFAULT_CHECKS_LIMIT = 100
# Windows this long or longer are answered from the hourly rollups.
ROLLUP_WINDOW = timedelta(days=1)

Method = Literal["GET", "HEAD"]


# The regex module unrolls a repeat into as many copies as its minimum count, a few hundred
# bytes each: "x{4294967294}" alone would take more memory than the machine has. A pattern may
# hold at most this many copies, counted generously as its length times the product of all its
# minimum repeat counts (each at least 1), which bounds any nesting of repeats.
MAX_REGEX_COPIES = 10_000
REPEAT = re.compile(r"\{(\d+)(?:,\d*)?\}")
# In verbose mode, (?x), a repeat count may hold whitespace and even a comment.
COMMENT_IN_REPEAT = re.compile(r"\{[\d,]*#")


def _valid_regex(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    unspaced = "".join(char for char in pattern if not char.isspace())
    if COMMENT_IN_REPEAT.search(unspaced):
        raise ValueError("invalid regex: a comment inside a repeat count")
    copies = len(pattern)
    for minimum in REPEAT.findall(unspaced):
        copies *= max(int(minimum), 1)
        if copies > MAX_REGEX_COPIES:
            raise ValueError("invalid regex: its repeat counts are too large")
    try:
        regex.compile(pattern)
    except regex.error as error:
        raise ValueError(f"invalid regex: {error}") from None
    return pattern


class MonitorIn(RequestBody):
    """A website to check every `interval_s` seconds."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, examples=["https://example.com/"])
    interval_s: int = Field(ge=5, le=MAX_INTERVAL_S)
    regex: str | None = Field(default=None, min_length=1, max_length=MAX_REGEX_LENGTH)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    method: Method = "GET"

    _check_regex = field_validator("regex")(_valid_regex)


class MonitorChanges(RequestBody):
    """The fields to change; a regex set to null removes it."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    interval_s: int | None = Field(default=None, ge=5, le=MAX_INTERVAL_S)
    regex: str | None = Field(default=None, min_length=1, max_length=MAX_REGEX_LENGTH)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    method: Method | None = None

    _check_regex = field_validator("regex")(_valid_regex)


class Monitor(BaseModel):
    id: uuid.UUID
    url: str
    method: Method
    interval_s: int
    timeout_s: float
    regex: str | None
    created_at: datetime
    updated_at: datetime
    next_check_at: datetime | None


class Check(BaseModel):
    check_id: uuid.UUID
    checked_at: datetime
    up: bool
    status_code: int | None
    response_time_ms: float | None
    dns_ms: float | None
    connect_ms: float | None
    tls_ms: float | None
    first_byte_ms: float | None
    regex_matched: bool | None
    error_kind: str | None
    error: str | None


class Uptime(BaseModel):
    monitor_id: uuid.UUID
    since: datetime
    until: datetime
    window_s: int
    source: Literal["checks", "rollups"]
    uptime_pct: float | None
    checks: int
    p50_ms: float | None
    p95_ms: float | None


def validated_fields(
    http: GuardedClient,
    *,
    url: str,
    interval_s: int,
    timeout_s: float,
    method: str,
    regex: str | None,
) -> store.MonitorFields:
    """Check what pydantic cannot: the URL is one the guarded client would request, and the
    timeout fits in the interval."""
    try:
        http.check_url(url)
    except BlockedTarget as error:
        raise Unprocessable(f"invalid url: {error}") from None
    if regex is not None and method == "HEAD":
        raise Unprocessable("a regex needs method GET: a HEAD response has no body to search")
    if timeout_s > interval_s:
        raise Unprocessable(f"timeout_s ({timeout_s}) must not exceed interval_s ({interval_s})")
    return store.MonitorFields(
        url=url, interval_s=interval_s, timeout_s=timeout_s, method=method, regex=regex
    )


def _monitor(row: store.Row) -> Monitor:
    return Monitor(
        **{name: row[name] for name in Monitor.model_fields if name in row},
        next_check_at=row["due_at"],
    )


async def _existing(resources: Resources, monitor_id: uuid.UUID) -> store.Row:
    row = await store.get_monitor(resources.pool, monitor_id)
    if row is None:
        raise NotFound(f"no monitor {monitor_id}")
    return row


ResourcesDep = Annotated[Resources, Depends(get_resources)]


MONITOR_ID = "3c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
MONITOR_EXAMPLE = {
    "id": MONITOR_ID,
    "url": "https://example.com/health",
    "method": "GET",
    "interval_s": 60,
    "timeout_s": 10.0,
    "regex": "ok|healthy",
    "created_at": "2026-12-01T08:00:00Z",
    "updated_at": "2026-12-01T08:00:00Z",
    "next_check_at": "2026-12-01T08:01:00Z",
}
TAKEN_URL = answer(
    {"detail": "https://example.com/health is already monitored"},
    "Another monitor has this URL",
)


@router.post(
    "/monitors",
    summary="Monitor a website",
    status_code=201,
    response_model=Monitor,
    openapi_extra=request_example(
        {"url": "https://example.com/health", "interval_s": 60, "regex": "ok|healthy"}
    ),
    responses={201: answer(MONITOR_EXAMPLE), 409: TAKEN_URL},
)
async def create_monitor(body: MonitorIn, resources: ResourcesDep) -> Monitor:
    """Start checking a website; its first check is due at once."""
    fields = validated_fields(
        resources.http,
        url=body.url,
        interval_s=body.interval_s,
        timeout_s=body.timeout_s
        or min(resources.settings.monitor_default_timeout_s, body.interval_s),
        method=body.method,
        regex=body.regex,
    )
    row = await store.create_monitor(resources.pool, fields)
    if row is None:
        raise Conflict(f"{body.url} is already monitored")
    return _monitor(row)


@router.get(
    "/monitors",
    summary="List monitors",
    description="Every monitor, oldest first, a page at a time (`limit`, `offset`).",
    response_model=list[Monitor],
    responses={200: answer([MONITOR_EXAMPLE])},
)
async def list_monitors(
    resources: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # PostgreSQL OFFSET is a bigint
) -> list[Monitor]:
    return [_monitor(row) for row in await store.list_monitors(resources.pool, limit, offset)]


@router.get(
    "/monitors/{monitor_id}",
    summary="Read a monitor",
    description="A monitor's settings and when it is next checked.",
    response_model=Monitor,
    responses={200: answer(MONITOR_EXAMPLE)},
)
async def get_monitor(monitor_id: uuid.UUID, resources: ResourcesDep) -> Monitor:
    return _monitor(await _existing(resources, monitor_id))


@router.patch(
    "/monitors/{monitor_id}",
    summary="Change a monitor",
    response_model=Monitor,
    openapi_extra=request_example({"interval_s": 30, "regex": None}),
    responses={
        200: answer(MONITOR_EXAMPLE | {"interval_s": 30, "regex": None}),
        409: TAKEN_URL,
    },
)
async def update_monitor(
    monitor_id: uuid.UUID, body: MonitorChanges, resources: ResourcesDep
) -> Monitor:
    """Change some settings; the monitor is checked at once with the new ones."""
    current = await _existing(resources, monitor_id)
    given = body.model_fields_set
    for name in ("url", "interval_s", "timeout_s", "method"):
        if name in given and getattr(body, name) is None:
            raise Unprocessable(f"{name} cannot be null")

    def chosen(name: str) -> Any:
        return getattr(body, name) if name in given else current[name]

    fields = validated_fields(
        resources.http,
        url=chosen("url"),
        interval_s=chosen("interval_s"),
        timeout_s=chosen("timeout_s"),
        method=chosen("method"),
        regex=chosen("regex"),
    )
    try:
        row = await store.update_monitor(resources.pool, monitor_id, fields)
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"{fields.url} is already monitored") from None
    if row is None:
        raise NotFound(f"no monitor {monitor_id}")
    return _monitor(row)


@router.delete("/monitors/{monitor_id}", summary="Stop monitoring a website", status_code=204)
async def delete_monitor(monitor_id: uuid.UUID, resources: ResourcesDep) -> Response:
    """Stop checking a website. Its stored checks stay until retention removes them."""
    if not await store.delete_monitor(resources.pool, monitor_id):
        raise NotFound(f"no monitor {monitor_id}")
    return Response(status_code=204)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get(
    "/monitors/{monitor_id}/checks",
    summary="A monitor's checks",
    response_model=list[Check],
    responses={
        200: answer(
            [
                {
                    "check_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "checked_at": "2026-12-01T08:01:00.004Z",
                    "up": True,
                    "status_code": 200,
                    "response_time_ms": 84.1,
                    "dns_ms": 3.2,
                    "connect_ms": 11.5,
                    "tls_ms": 24.9,
                    "first_byte_ms": 80.3,
                    "regex_matched": True,
                    "error_kind": None,
                    "error": None,
                }
            ]
        )
    },
)
async def list_checks(
    monitor_id: uuid.UUID,
    resources: ResourcesDep,
    since: Annotated[datetime | None, Query(description="ISO 8601; UTC if no offset")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; UTC if no offset")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = DEFAULT_CHECKS_LIMIT,
) -> list[Check]:
    """The newest checks first, within [since, until)."""
    await _existing(resources, monitor_id)
    start = _utc(since) or datetime.now(UTC) - timedelta(days=resources.settings.retention_days)
    end = _utc(until) or datetime.now(UTC) + timedelta(days=1)
    if start >= end:
        raise Unprocessable("since must be before until")
    rows = await store.recent_checks(resources.pool, monitor_id, start, end, limit)
    return [Check(**row) for row in rows]


WINDOW = re.compile(r"^(\d{1,9})([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str, max_days: int) -> timedelta:
    """ "1h", "24h", "7d", "30d", "90m" or plain seconds, from 60 s up to `max_days` days."""
    match = WINDOW.match(text.strip())
    if match is None:
        raise Unprocessable(f"window {text!r}: use seconds or a number with s, m, h or d")
    window = timedelta(seconds=int(match.group(1)) * UNIT_S[match.group(2)])
    if not timedelta(minutes=1) <= window <= timedelta(days=max_days):
        raise Unprocessable(f"window {text!r}: must be between 1 minute and {max_days} days")
    return window


@router.get(
    "/monitors/{monitor_id}/uptime",
    summary="A monitor's uptime and response times",
    response_model=Uptime,
    responses={
        200: answer(
            {
                "monitor_id": MONITOR_ID,
                "since": "2026-11-01T08:00:00Z",
                "until": "2026-12-01T08:00:00Z",
                "window_s": 2592000,
                "source": "rollups",
                "uptime_pct": 99.95,
                "checks": 43200,
                "p50_ms": 82.0,
                "p95_ms": 140.0,
            }
        )
    },
)
async def uptime(
    monitor_id: uuid.UUID,
    resources: ResourcesDep,
    window: Annotated[str, Query(description="1h, 24h, 7d, 30d, or seconds")] = "24h",
) -> Uptime:
    """Share of checks that were up, and the median and 95th percentile response time.

    Windows under a day are computed from every check; longer ones from the hourly rollups
    plus the checks of the partial hours at both ends (percentiles then come from a latency
    histogram and are within about 12% of the exact value)."""
    await _existing(resources, monitor_id)
    span = parse_window(window, resources.settings.retention_days)
    until = datetime.now(UTC)
    since = until - span
    if span >= ROLLUP_WINDOW:
        figures = await store.uptime_from_rollups(resources.pool, monitor_id, since, until)
        source: Literal["checks", "rollups"] = "rollups"
    else:
        figures = await store.uptime_from_raw(resources.pool, monitor_id, since, until)
        source = "checks"
    return Uptime(
        monitor_id=monitor_id,
        since=since,
        until=until,
        window_s=int(span.total_seconds()),
        source=source,
        uptime_pct=figures.uptime_pct,
        checks=figures.checks,
        p50_ms=figures.p50_ms,
        p95_ms=figures.p95_ms,
    )
