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
from errands.core.http import GuardedClient, masked_url
from errands.core.openapi import answer
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody, check_target
from errands.monitors import maintenance, store
from errands.monitors.results import DEFAULT_EXPECTED_STATUS, parse_expected_status

__all__ = [
    "Check",
    "IncidentOut",
    "Monitor",
    "MonitorChanges",
    "MonitorIn",
    "Uptime",
    "fields_of",
    "parse_window",
    "router",
    "validated_fields",
]

router = APIRouter(tags=["monitors"])

MAX_URL_LENGTH = 2048
MAX_REGEX_LENGTH = 1000
MAX_INTERVAL_S = 7 * 24 * 3600
MAX_TIMEOUT_S = 60.0
MAX_NAME_LENGTH = 200
MAX_THRESHOLD = 100
MAX_CHANNELS = 50
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


def _valid_expected_status(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        ranges = parse_expected_status(text)
    except ValueError as error:
        raise ValueError(f"invalid expected_status: {error}") from None
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


RegexMode = Literal["must_match", "must_not_match"]
MONITOR_EXAMPLE: dict[str, Any] = {
    "url": "https://example.com/health",
    "name": "Example health",
    "interval_s": 60,
    "regex": "ok",
    "regex_mode": "must_match",
    "expected_status": "200-299",
    "failure_threshold": 3,
    "success_threshold": 1,
    "max_response_ms": 800,
    "channels": ["6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"],
    "public": True,
}


class MonitorIn(RequestBody):
    """A website (http:// or https://) or a TCP port (tcp://host:port) to check every
    `interval_s` seconds, and when to tell its channels."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [MONITOR_EXAMPLE]})

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, examples=["https://example.com/"])
    interval_s: int = Field(ge=5, le=MAX_INTERVAL_S)
    regex: str | None = Field(default=None, min_length=1, max_length=MAX_REGEX_LENGTH)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    method: Method = "GET"
    name: str | None = Field(
        default=None, min_length=1, max_length=MAX_NAME_LENGTH, description="Default: the host"
    )
    failure_threshold: int = Field(default=3, ge=1, le=MAX_THRESHOLD)
    success_threshold: int = Field(default=1, ge=1, le=MAX_THRESHOLD)
    expected_status: str = Field(
        default=DEFAULT_EXPECTED_STATUS,
        max_length=200,
        description="Status codes and ranges that count as up, e.g. 200-299,301",
    )
    max_response_ms: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT_S * 1000, description="Slower is degraded"
    )
    regex_mode: RegexMode = "must_match"
    tls_expiry_days: int = Field(default=14, ge=0, le=365)
    channels: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_CHANNELS)
    paused: bool = False
    public: bool = Field(default=False, description="Shown on the status page and badges")

    _check_regex = field_validator("regex")(_valid_regex)
    _check_expected_status = field_validator("expected_status")(_valid_expected_status)


class MonitorChanges(RequestBody):
    """The fields to change; a regex, name or max_response_ms set to null removes it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"interval_s": 30, "paused": True}]},
    )

    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    interval_s: int | None = Field(default=None, ge=5, le=MAX_INTERVAL_S)
    regex: str | None = Field(default=None, min_length=1, max_length=MAX_REGEX_LENGTH)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    method: Method | None = None
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    failure_threshold: int | None = Field(default=None, ge=1, le=MAX_THRESHOLD)
    success_threshold: int | None = Field(default=None, ge=1, le=MAX_THRESHOLD)
    expected_status: str | None = Field(default=None, max_length=200)
    max_response_ms: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S * 1000)
    regex_mode: RegexMode | None = None
    tls_expiry_days: int | None = Field(default=None, ge=0, le=365)
    channels: list[uuid.UUID] | None = Field(default=None, max_length=MAX_CHANNELS)
    paused: bool | None = None
    public: bool | None = None

    _check_regex = field_validator("regex")(_valid_regex)
    _check_expected_status = field_validator("expected_status")(_valid_expected_status)


# Fields a change may set to null (they are optional on a monitor); the rest may not.
NULLABLE_CHANGES = frozenset({"regex", "name", "max_response_ms"})


class Monitor(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **MONITOR_EXAMPLE,
                    "id": "0b7c1f4e-2d3a-4c5b-8e9f-1a2b3c4d5e6f",
                    "method": "GET",
                    "timeout_s": 10.0,
                    "tls_expiry_days": 14,
                    "paused": False,
                    "state": "up",
                    "state_since": "2026-12-01T22:00:00Z",
                    "created_at": "2026-12-01T21:00:00Z",
                    "updated_at": "2026-12-01T21:00:00Z",
                    "next_check_at": "2026-12-01T23:01:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    url: str = Field(description="With any user:password@ masked")
    name: str = Field(description="As given, or else the URL's host")
    method: Method
    interval_s: int
    timeout_s: float
    regex: str | None
    regex_mode: RegexMode
    expected_status: str
    max_response_ms: float | None
    failure_threshold: int
    success_threshold: int
    tls_expiry_days: int
    channels: list[uuid.UUID]
    paused: bool
    public: bool
    state: Literal["new", "up", "degraded", "down"]
    state_since: datetime | None
    created_at: datetime
    updated_at: datetime
    next_check_at: datetime | None


class Check(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "check_id": "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a",
                    "checked_at": "2026-12-01T22:59:00Z",
                    "up": True,
                    "status_code": 200,
                    "response_time_ms": 84.2,
                    "dns_ms": 3.1,
                    "connect_ms": 20.4,
                    "tls_ms": None,
                    "first_byte_ms": 80.0,
                    "regex_matched": True,
                    "error_kind": None,
                    "error": None,
                    "tls_expires_at": "2027-02-14T12:00:00Z",
                }
            ]
        }
    )

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
    tls_expires_at: datetime | None


class Uptime(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "monitor_id": "0b7c1f4e-2d3a-4c5b-8e9f-1a2b3c4d5e6f",
                    "since": "2026-11-30T23:00:00Z",
                    "until": "2026-12-01T23:00:00Z",
                    "window_s": 86400,
                    "source": "rollups",
                    "uptime_pct": 99.931,
                    "checks": 1440,
                    "p50_ms": 84.2,
                    "p95_ms": 210.5,
                    "maintenance_s": 3600.0,
                }
            ]
        }
    )

    monitor_id: uuid.UUID
    since: datetime
    until: datetime
    window_s: int
    source: Literal["checks", "rollups"]
    uptime_pct: float | None
    checks: int
    p50_ms: float | None
    p95_ms: float | None
    maintenance_s: float = Field(description="How much of the window was maintenance")


class IncidentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "state": "down",
                    "cause": "answered with status 503, which the monitor does not expect",
                    "started_at": "2026-12-01T22:00:00Z",
                    "resolved_at": "2026-12-01T22:05:00Z",
                    "duration_s": 300.0,
                    "failed_checks": 5,
                }
            ]
        }
    )

    id: uuid.UUID
    state: Literal["down", "degraded"]
    cause: str
    started_at: datetime
    resolved_at: datetime | None
    duration_s: float | None = Field(description="Until resolved, or until now while open")
    failed_checks: int


def validated_fields(http: GuardedClient, fields: store.MonitorFields) -> store.MonitorFields:
    """Check what pydantic cannot: the URL is one the guarded client would request, and the
    settings fit together."""
    check_target(http, fields.url, tcp=True)
    if fields.url.startswith("tcp://") and fields.regex is not None:
        raise Unprocessable("a regex needs an http(s) URL: a TCP check reads no page")
    if fields.regex is not None and fields.method == "HEAD":
        raise Unprocessable("a regex needs method GET: a HEAD response has no body to search")
    if fields.timeout_s > fields.interval_s:
        raise Unprocessable(
            f"timeout_s ({fields.timeout_s}) must not exceed interval_s ({fields.interval_s})"
        )
    if fields.max_response_ms is not None and fields.max_response_ms > fields.timeout_s * 1000:
        raise Unprocessable(
            f"max_response_ms ({fields.max_response_ms:g}) must not exceed timeout_s in ms"
            f" ({fields.timeout_s * 1000:g})"
        )
    return fields


def _monitor(row: store.Row) -> Monitor:
    shown = {
        "url": masked_url(row["url"]),
        "name": row["display_name"],
        "next_check_at": row["due_at"],
    }
    return Monitor(
        **{name: row[name] for name in Monitor.model_fields if name in row and name not in shown},
        **shown,
    )


async def _existing(resources: Resources, monitor_id: uuid.UUID) -> store.Row:
    row = await store.get_monitor(resources.pool, monitor_id)
    if row is None:
        raise NotFound(f"no monitor {monitor_id}")
    return row


def _already_monitored(url: str, monitor_id: uuid.UUID) -> Conflict:
    return Conflict(f"{masked_url(url)} is already monitored by monitor {monitor_id}")


ResourcesDep = Annotated[Resources, Depends(get_resources)]
NOT_FOUND = {"description": "No monitor has this id"}
INVALID = {"description": "A field is missing, malformed, or does not fit the others"}


def fields_of(body: MonitorIn, default_timeout_s: float) -> store.MonitorFields:
    """The stored fields of a new monitor (validated_fields still has to check them)."""
    return store.MonitorFields(
        url=body.url,
        interval_s=body.interval_s,
        timeout_s=body.timeout_s or min(default_timeout_s, body.interval_s),
        method=body.method,
        regex=body.regex,
        name=body.name,
        failure_threshold=body.failure_threshold,
        success_threshold=body.success_threshold,
        expected_status=body.expected_status,
        max_response_ms=body.max_response_ms,
        regex_mode=body.regex_mode,
        tls_expiry_days=body.tls_expiry_days,
        paused=body.paused,
        public=body.public,
        channels=tuple(body.channels),
    )


@router.post(
    "/monitors",
    status_code=201,
    response_model=Monitor,
    summary="Start monitoring a website or TCP port",
    responses={
        201: {"description": "The monitor; its first check is due at once"},
        409: {"description": "This URL is already monitored; the detail names the monitor"},
        422: INVALID,
    },
)
async def create_monitor(body: MonitorIn, resources: ResourcesDep) -> Monitor:
    """Start checking a website (or a TCP port); its first check is due at once. After
    `failure_threshold` failed checks it is down, after `success_threshold` good ones up again,
    and each change notifies its channels."""
    fields = validated_fields(
        resources.http, fields_of(body, resources.settings.monitor_default_timeout_s)
    )
    created = await store.create_monitor(resources.pool, fields)
    if isinstance(created, uuid.UUID):
        raise _already_monitored(body.url, created)
    return _monitor(created)


@router.get(
    "/monitors",
    response_model=list[Monitor],
    summary="List monitors",
    responses={200: {"description": "Monitors, oldest first"}},
)
async def list_monitors(
    resources: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # PostgreSQL OFFSET is a bigint
) -> list[Monitor]:
    """Monitors with their settings and current state, oldest first."""
    return [_monitor(row) for row in await store.list_monitors(resources.pool, limit, offset)]


@router.get(
    "/monitors/{monitor_id}",
    response_model=Monitor,
    summary="Read a monitor",
    responses={200: {"description": "The monitor"}, 404: NOT_FOUND},
)
async def get_monitor(monitor_id: uuid.UUID, resources: ResourcesDep) -> Monitor:
    """One monitor's settings and current state."""
    return _monitor(await _existing(resources, monitor_id))


@router.patch(
    "/monitors/{monitor_id}",
    response_model=Monitor,
    summary="Change a monitor",
    responses={
        200: {"description": "The changed monitor"},
        404: NOT_FOUND,
        409: {"description": "The new URL is already monitored; the detail names the monitor"},
        422: INVALID,
    },
)
async def update_monitor(
    monitor_id: uuid.UUID, body: MonitorChanges, resources: ResourcesDep
) -> Monitor:
    """Change some settings; the monitor is checked at once with the new ones (unless paused)."""
    current = await _existing(resources, monitor_id)
    given = body.model_fields_set
    for name in given - NULLABLE_CHANGES:
        if getattr(body, name) is None:
            raise Unprocessable(f"{name} cannot be null")

    def chosen(name: str) -> Any:
        return getattr(body, name) if name in given else current[name]

    fields = store.MonitorFields(
        url=chosen("url"),
        interval_s=chosen("interval_s"),
        timeout_s=chosen("timeout_s"),
        method=chosen("method"),
        regex=chosen("regex"),
        name=chosen("name"),
        failure_threshold=chosen("failure_threshold"),
        success_threshold=chosen("success_threshold"),
        expected_status=chosen("expected_status"),
        max_response_ms=chosen("max_response_ms"),
        regex_mode=chosen("regex_mode"),
        tls_expiry_days=chosen("tls_expiry_days"),
        paused=chosen("paused"),
        public=chosen("public"),
        channels=tuple(chosen("channels")),
    )
    fields = validated_fields(resources.http, fields)
    try:
        row = await store.update_monitor(resources.pool, monitor_id, fields)
    except psycopg.errors.UniqueViolation:
        holder = await store.monitor_with_url(resources.pool, fields.url)
        raise _already_monitored(fields.url, holder or monitor_id) from None
    if row is None:
        raise NotFound(f"no monitor {monitor_id}")
    return _monitor(row)


@router.delete(
    "/monitors/{monitor_id}",
    status_code=204,
    summary="Stop monitoring",
    responses={204: {"description": "Deleted"}, 404: NOT_FOUND},
)
async def delete_monitor(monitor_id: uuid.UUID, resources: ResourcesDep) -> Response:
    """Stop checking a website. Its stored checks stay until retention removes them."""
    if not await store.delete_monitor(resources.pool, monitor_id):
        raise NotFound(f"no monitor {monitor_id}")
    return Response(status_code=204)


@router.get(
    "/monitors/{monitor_id}/checks",
    response_model=list[Check],
    summary="List a monitor's checks",
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
                    "tls_expires_at": "2027-02-14T23:59:59Z",
                }
            ],
            "Checks, newest first",
        ),
        404: NOT_FOUND,
        422: {"description": "A bad time or limit"},
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
    now = datetime.now(UTC)
    start = (
        maintenance.utc(since) if since else now - timedelta(days=resources.settings.retention_days)
    )
    end = maintenance.utc(until) if until else now + timedelta(days=1)
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
    response_model=Uptime,
    summary="A monitor's uptime and response times",
    responses={
        200: answer(
            {
                "monitor_id": "3c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
                "since": "2026-11-01T08:00:00Z",
                "until": "2026-12-01T08:00:00Z",
                "window_s": 2592000,
                "source": "rollups",
                "uptime_pct": 99.95,
                "checks": 43200,
                "p50_ms": 82.0,
                "p95_ms": 140.0,
                "maintenance_s": 1800.0,
            },
            "Uptime over the window",
        ),
        404: NOT_FOUND,
        422: {"description": "A bad window"},
    },
)
async def uptime(
    monitor_id: uuid.UUID,
    resources: ResourcesDep,
    window: Annotated[str, Query(description="1h, 24h, 7d, 30d, or seconds")] = "24h",
) -> Uptime:
    """Share of checks that were up, and the median and 95th percentile response time.

    `maintenance_s` says how much of the window fell in maintenance windows. Windows under a
    day are computed from every check; longer ones from the hourly rollups
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
        maintenance_s=round(
            maintenance.maintenance_seconds(
                await store.windows_of_monitor(resources.pool, monitor_id, since, until),
                monitor_id,
                since,
                until,
            ),
            3,
        ),
    )


@router.get(
    "/monitors/{monitor_id}/incidents",
    response_model=list[IncidentOut],
    summary="List a monitor's incidents",
    responses={200: {"description": "Incidents, newest first"}, 404: NOT_FOUND},
)
async def list_incidents(
    monitor_id: uuid.UUID,
    resources: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[IncidentOut]:
    """The times the monitor was down or degraded, newest first: when each started and was
    resolved (null while open), why, and how many checks failed during it."""
    await _existing(resources, monitor_id)
    now = datetime.now(UTC)
    return [
        IncidentOut(
            **row,
            duration_s=round(((row["resolved_at"] or now) - row["started_at"]).total_seconds(), 3),
        )
        for row in await store.list_incidents(resources.pool, monitor_id, limit)
    ]


def _maintenance_window(row: store.Row) -> maintenance.MaintenanceWindow:
    return maintenance.MaintenanceWindow(
        id=row["id"],
        monitors="all" if row["monitor_ids"] is None else row["monitor_ids"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        cron=row["cron"],
        duration_s=row["duration_s"],
        created_at=row["created_at"],
    )


@router.post(
    "/maintenance",
    status_code=201,
    response_model=maintenance.MaintenanceWindow,
    summary="Hold notifications during a maintenance window",
    responses={
        201: {"description": "The window is stored"},
        422: {"description": "A bad time, cron expression or monitor id"},
    },
)
async def create_maintenance(
    body: maintenance.MaintenanceIn, resources: ResourcesDep
) -> maintenance.MaintenanceWindow:
    """While the window is open, checks go on and incidents are recorded, but no channel is
    notified; uptime answers say how much of their window was maintenance."""
    row = await store.create_window(
        resources.pool,
        monitor_ids=None if body.monitors == "all" else sorted(set(body.monitors)),
        starts_at=maintenance.utc(body.starts_at) if body.starts_at else datetime.now(UTC),
        ends_at=maintenance.utc(body.ends_at) if body.ends_at else None,
        cron=body.cron,
        duration_s=body.duration_s,
    )
    return _maintenance_window(row)


@router.get(
    "/maintenance",
    response_model=list[maintenance.MaintenanceWindow],
    summary="List maintenance windows",
    responses={200: {"description": "Every window, earliest first"}},
)
async def list_maintenance(resources: ResourcesDep) -> list[maintenance.MaintenanceWindow]:
    """Every maintenance window, past, open and future."""
    return [_maintenance_window(row) for row in await store.list_windows(resources.pool)]


@router.delete(
    "/maintenance/{window_id}",
    status_code=204,
    summary="Delete a maintenance window",
    responses={204: {"description": "Deleted"}, 404: {"description": "No such window"}},
)
async def delete_maintenance(window_id: uuid.UUID, resources: ResourcesDep) -> Response:
    """Remove a window; notifications it would have held are sent again from now on."""
    if not await store.delete_window(resources.pool, window_id):
        raise NotFound(f"no maintenance window {window_id}")
    return Response(status_code=204)
