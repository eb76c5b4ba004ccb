"""The console's pages over the features: overview, monitors, timers, uploads and usage stats.

Each page is built as a small typed object by a function of its own (what a test checks), then
rendered by its template. Reads go through the features' store functions and changes through
their JSON routes' logic, so the console and the API answer alike.
"""

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup
from pydantic import ValidationError

from errands.console import charts
from errands.console.openapi import form_body, html_answers
from errands.console.session import PageError, Viewer, checked_form, current_viewer, require_scope
from errands.console.templating import render
from errands.conversions import api as conversions_api
from errands.conversions import store as conversions_store
from errands.core import delivery
from errands.core.errors import ErrandsError, Unprocessable
from errands.core.http import masked_url
from errands.core.paging import BadCursor
from errands.core.resources import Resources, get_resources
from errands.monitors import api as monitors_api
from errands.monitors import channels as channels_api
from errands.monitors import store as monitors_store
from errands.monitors import summaries
from errands.monitors.maintenance import MaintenanceIn, MaintenanceWindow
from errands.stats import api as stats_api
from errands.timers import api as timers_api
from errands.timers import store as timers_store
from errands.timers.schedules_api import ScheduleView

__all__ = [
    "AlertsPage",
    "MonitorDetailPage",
    "MonitorFormPage",
    "MonitorRow",
    "MonitorsPage",
    "OverviewPage",
    "StatsPage",
    "TimerDetailPage",
    "TimersPage",
    "UploadPage",
    "UploadsPage",
    "build_monitor_detail",
    "build_monitors_page",
    "build_overview",
    "build_timers_page",
    "build_uploads_page",
    "router",
]

router = APIRouter(tags=["console"])

ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def _viewer(request: Request, resources: ResourcesDep) -> Viewer:
    return await current_viewer(request, resources)


ViewerDep = Annotated[Viewer, Depends(_viewer)]

MONITORS_PER_PAGE = 50
HEARTBEAT_SLOTS = 30
RECENT_CHECKS_SHOWN = 20
State = Literal["new", "up", "degraded", "down", "paused"]


def _state(state: str, paused: bool) -> State:
    """What a person reads: a paused monitor is paused, whatever its last state."""
    shown: State = "paused" if paused else state  # type: ignore[assignment]
    return shown


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _page_error(error: ErrandsError) -> PageError:
    return PageError(error.status_code, error.detail)


# --- Overview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteLine:
    method: str
    route: str
    count: int
    p95_ms: float
    errors: int


@dataclass(frozen=True)
class FailedDelivery:
    id: uuid.UUID
    source: str
    method: str
    url: str
    attempts: int
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True)
class OverviewPage:
    """Each area's counts and health; an area the viewer's key cannot read is None. Webhook
    deliveries serve every feature, so they need an `admin` key."""

    title: str
    monitor_states: dict[str, int] | None
    timers_pending: int | None
    files_waiting: int | None
    busiest_routes: list[RouteLine] | None
    deliveries: dict[str, int] | None
    failed_deliveries: list[FailedDelivery] | None


FAILED_DELIVERIES_SHOWN = 5


async def build_overview(request: Request, resources: Resources, viewer: Viewer) -> OverviewPage:
    pool = resources.pool
    states = await summaries.count_monitor_states(pool) if viewer.allows("monitors") else None
    routes = None
    if viewer.allows("stats"):
        stats = await stats_api.get_stats(request, resources)
        busiest = sorted(stats.last_hour, key=lambda line: line.count, reverse=True)[:5]
        routes = [
            RouteLine(line.method, line.route, line.count, line.p95_ms, line.errors)
            for line in busiest
        ]
    deliveries = failed = None
    if viewer.allows("admin"):
        deliveries = await delivery.count_by_status(pool)
        rows, _ = await delivery.list_deliveries(
            pool, status="failed", limit=FAILED_DELIVERIES_SHOWN
        )
        failed = [
            FailedDelivery(**{name: row[name] for name in FailedDelivery.__dataclass_fields__})
            for row in rows
        ]
    down = states["down"] if states else 0
    return OverviewPage(
        title=f"Overview ({down} down)" if down else "Overview",
        monitor_states=states,
        timers_pending=(
            await timers_store.count_pending(pool) if viewer.allows("timers") else None
        ),
        files_waiting=(
            await conversions_store.count_waiting(pool) if viewer.allows("conversions") else None
        ),
        busiest_routes=routes,
        deliveries=deliveries,
        failed_deliveries=failed,
    )


@router.get(
    "/", summary="Console overview", response_class=HTMLResponse, responses=html_answers(303, 403)
)
async def overview(request: Request, resources: ResourcesDep, viewer: ViewerDep) -> HTMLResponse:
    """Each feature's counts and health at a glance: monitors up and down, timers pending,
    files waiting to be converted, webhook deliveries and the last that failed, and the
    busiest routes of the last hour."""
    page = await build_overview(request, resources, viewer)
    return await render(
        request, resources, "overview.html", viewer=viewer, section="overview", page=page
    )


# --- Monitors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorRow:
    id: uuid.UUID
    name: str
    url: str  # with any user:password@ masked
    method: str
    interval_s: int
    state: State
    last_checked_at: datetime | None
    last_response_ms: float | None
    uptime_24h_pct: float | None
    uptime_30d_pct: float | None
    p95_24h_ms: float | None
    heartbeat: Markup


@dataclass(frozen=True)
class MonitorsPage:
    title: str
    rows: list[MonitorRow]
    search: str
    state: State | None
    page: int
    pages: int
    total: int

    def link(self, page: int) -> str:
        """This listing's URL at another page, keeping the search and the state filter."""
        query = {"q": self.search, "state": self.state or "", "page": str(page)}
        return "/console/monitors?" + urlencode({k: v for k, v in query.items() if v})


async def build_monitors_page(
    resources: Resources, *, search: str, state: State | None, page: int
) -> MonitorsPage:
    pool = resources.pool
    listing = await summaries.monitor_page(
        pool,
        search=search or None,
        state=state,
        limit=MONITORS_PER_PAGE,
        offset=(page - 1) * MONITORS_PER_PAGE,
    )
    ids = [monitor.id for monitor in listing.monitors]
    beats = await summaries.recent_beats(pool, ids, HEARTBEAT_SLOTS)
    figures = await summaries.recent_figures(pool, ids)
    rows = [
        MonitorRow(
            id=monitor.id,
            name=monitor.name,
            url=masked_url(monitor.url),
            method=monitor.method,
            interval_s=monitor.interval_s,
            state=_state(monitor.state, monitor.paused),
            last_checked_at=monitor.last_checked_at,
            last_response_ms=monitor.last_response_ms,
            uptime_24h_pct=figures[monitor.id].uptime_24h_pct,
            uptime_30d_pct=figures[monitor.id].uptime_30d_pct,
            p95_24h_ms=figures[monitor.id].p95_24h_ms,
            heartbeat=charts.heartbeat_bar([beat.up for beat in beats[monitor.id]]),
        )
        for monitor in listing.monitors
    ]
    down = sum(row.state == "down" for row in rows)
    return MonitorsPage(
        title=f"Monitors ({down} down)" if down else "Monitors",
        rows=rows,
        search=search,
        state=state,
        page=page,
        pages=max(1, math.ceil(listing.total / MONITORS_PER_PAGE)),
        total=listing.total,
    )


StateFilter = Annotated[
    Literal["", "new", "up", "degraded", "down", "paused"],
    Query(description="Only monitors in this state; empty for all", examples=["down"]),
]


@router.get(
    "/console/monitors",
    summary="Monitors",
    response_class=HTMLResponse,
    responses=html_answers(303, 403),
)
async def monitors(
    request: Request,
    resources: ResourcesDep,
    viewer: ViewerDep,
    q: Annotated[
        str, Query(max_length=200, description="Part of the name or URL", examples=["shop"])
    ] = "",
    state: StateFilter = "",
    page: Annotated[int, Query(ge=1, le=1_000_000, examples=[1])] = 1,
    fragment: Annotated[
        Literal["", "rows"], Query(description="`rows`: only the table's rows, for a refresh")
    ] = "",
) -> HTMLResponse:
    """Every monitor with its state, uptime over 24 hours and 30 days, 95th percentile response
    time, last check and a bar of its last 30 checks; search, filter by state, pages of 50."""
    require_scope(viewer, "monitors")
    built = await build_monitors_page(resources, search=q, state=state or None, page=page)
    template = "_monitor_rows.html" if fragment else "monitors.html"
    return await render(request, resources, template, viewer=viewer, section="monitors", page=built)


@dataclass(frozen=True)
class MonitorFormPage:
    """The form to add a monitor (monitor_id None) or change one, with what was typed."""

    title: str
    monitor_id: uuid.UUID | None
    values: dict[str, str]
    error: str | None


MONITOR_FIELDS = ("name", "url", "interval_s", "timeout_s", "method", "regex")
NEW_MONITOR = {
    "name": "", "url": "", "interval_s": "60", "timeout_s": "", "method": "GET", "regex": ""
}  # fmt: skip
MONITOR_FORM_FIELDS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "maxLength": 200},
    "url": {"type": "string", "maxLength": 2048},
    "interval_s": {"type": "string"},
    "timeout_s": {"type": "string"},
    "method": {"type": "string", "enum": ["GET", "HEAD"]},
    "regex": {"type": "string"},
}
MONITOR_FORM_EXAMPLE = {"url": "https://example.com/", "interval_s": "60", "method": "GET"}


def _monitor_input(fields: dict[str, str]) -> dict[str, object]:
    """The JSON the API would be sent for this form: blank optional fields left out."""
    unknown = sorted(set(fields) - set(MONITOR_FIELDS))
    if unknown:
        raise PageError(422, f"unknown form fields: {', '.join(unknown)}")
    return {name: value.strip() for name, value in fields.items() if value.strip()}


def _validation_detail(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'form'}: {problem['msg']}"
        for problem in error.errors()
    )


async def _monitor_form(
    request: Request,
    resources: Resources,
    viewer: Viewer,
    form: MonitorFormPage,
    status_code: int = 200,
) -> HTMLResponse:
    return await render(
        request,
        resources,
        "monitor_form.html",
        viewer=viewer,
        section="monitors",
        page=form,
        status_code=status_code,
    )


@router.get(
    "/console/monitors/new",
    summary="Form to add a monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403),
)
async def new_monitor(request: Request, resources: ResourcesDep, viewer: ViewerDep) -> HTMLResponse:
    """The form to start checking a website."""
    require_scope(viewer, "monitors")
    form = MonitorFormPage("Add a monitor", None, dict(NEW_MONITOR), None)
    return await _monitor_form(request, resources, viewer, form)


@router.post(
    "/console/monitors",
    summary="Add a monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 409, 422),
    openapi_extra=form_body(MONITOR_FORM_FIELDS, MONITOR_FORM_EXAMPLE),
)
async def create_monitor(request: Request, resources: ResourcesDep, viewer: ViewerDep) -> Response:
    """Start checking a website, as `POST /monitors` does; then show its page."""
    require_scope(viewer, "monitors")
    fields = await checked_form(request, resources)
    values = {**NEW_MONITOR, **fields}
    try:
        body = monitors_api.MonitorIn.model_validate(_monitor_input(fields))
        created = await monitors_api.create_monitor(body, resources)
    except ValidationError as error:
        form = MonitorFormPage("Add a monitor", None, values, _validation_detail(error))
        return await _monitor_form(request, resources, viewer, form, 422)
    except ErrandsError as error:
        form = MonitorFormPage("Add a monitor", None, values, error.detail)
        return await _monitor_form(request, resources, viewer, form, error.status_code)
    return _redirect(f"/console/monitors/{created.id}")


async def _existing_monitor(resources: Resources, monitor_id: uuid.UUID) -> monitors_api.Monitor:
    try:
        return await monitors_api.get_monitor(monitor_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None


@dataclass(frozen=True)
class CheckLine:
    checked_at: datetime
    up: bool
    status_code: int | None
    response_time_ms: float | None
    error: str | None


@dataclass(frozen=True)
class MonitorDetailPage:
    title: str
    monitor: monitors_api.Monitor
    state: State
    window: str
    windows: tuple[str, ...]
    uptime: monitors_api.Uptime
    response_chart: Markup
    heartbeat: Markup
    checks: list[CheckLine]
    incidents: list[monitors_api.IncidentOut]
    tls_expires_at: datetime | None  # as the last check that saw a certificate read it


INCIDENTS_SHOWN = 20


WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
# The 24-hour chart averages checks per slot of this length; longer windows use hourly rollups.
DAY_SLOT = timedelta(minutes=10)


def _slot_averages(
    checks: list[monitors_store.Row], since: datetime, slot: timedelta
) -> list[charts.TimePoint]:
    """The average response time of each slot that had checks, at the slot's middle; a slot
    whose checks all went unanswered is a gap."""
    slots: dict[int, list[float | None]] = {}
    for check in checks:
        index = int((check["checked_at"] - since) / slot)
        slots.setdefault(index, []).append(check["response_time_ms"])
    points = []
    for index in sorted(slots):
        answered = [ms for ms in slots[index] if ms is not None]
        average = sum(answered) / len(answered) if answered else None
        points.append(charts.TimePoint(since + slot * index + slot / 2, average))
    return points


async def build_monitor_detail(
    resources: Resources, monitor_id: uuid.UUID, window: str
) -> MonitorDetailPage:
    monitor = await _existing_monitor(resources, monitor_id)
    until = datetime.now(UTC)
    since = until - WINDOWS[window]
    if window == "24h":
        checks = await monitors_store.recent_checks(
            resources.pool, monitor_id, since, until, limit=10_000
        )
        points = _slot_averages(checks, since, DAY_SLOT)
        recent = checks[:RECENT_CHECKS_SHOWN]
    else:
        hours = await summaries.hourly_points(resources.pool, monitor_id, since)
        points = [
            charts.TimePoint(point.hour + timedelta(minutes=30), point.avg_ms) for point in hours
        ]
        recent = await monitors_store.recent_checks(
            resources.pool, monitor_id, until - timedelta(days=8), until, RECENT_CHECKS_SHOWN
        )
    uptime = await monitors_api.uptime(monitor_id, resources, window)
    incidents = await monitors_api.list_incidents(monitor_id, resources, INCIDENTS_SHOWN)
    beats = [check["up"] for check in reversed(recent)]
    state = _state(monitor.state, monitor.paused)
    return MonitorDetailPage(
        title=f"{monitor.name} ({state})",
        monitor=monitor,
        state=state,
        window=window,
        windows=tuple(WINDOWS),
        uptime=uptime,
        response_chart=charts.response_time_line(points, since, until),
        heartbeat=charts.heartbeat_bar(beats, RECENT_CHECKS_SHOWN),
        checks=[
            CheckLine(
                check["checked_at"],
                check["up"],
                check["status_code"],
                check["response_time_ms"],
                check["error"],
            )
            for check in recent
        ],
        incidents=incidents,
        tls_expires_at=next(
            (check["tls_expires_at"] for check in recent if check["tls_expires_at"]), None
        ),
    )


@router.get(
    "/console/monitors/{monitor_id}",
    summary="A monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
)
async def monitor_detail(
    request: Request,
    resources: ResourcesDep,
    viewer: ViewerDep,
    monitor_id: uuid.UUID,
    window: Annotated[Literal["24h", "7d", "30d"], Query(examples=["7d"])] = "24h",
) -> HTMLResponse:
    """One monitor: response time over 24 hours, 7 or 30 days, uptime and percentiles over the
    same window, and its recent checks."""
    require_scope(viewer, "monitors")
    page = await build_monitor_detail(resources, monitor_id, window)
    return await render(
        request, resources, "monitor.html", viewer=viewer, section="monitors", page=page
    )


@router.get(
    "/console/monitors/{monitor_id}/edit",
    summary="Form to change a monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
)
async def edit_monitor(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, monitor_id: uuid.UUID
) -> HTMLResponse:
    """The form to change a monitor's settings."""
    require_scope(viewer, "monitors")
    monitor = await _existing_monitor(resources, monitor_id)
    values = {
        "name": monitor.name,
        "url": monitor.url,
        "interval_s": str(monitor.interval_s),
        "timeout_s": f"{monitor.timeout_s:g}",
        "method": monitor.method,
        "regex": monitor.regex or "",
    }
    form = MonitorFormPage(f"Change {monitor.url}", monitor_id, values, None)
    return await _monitor_form(request, resources, viewer, form)


@router.post(
    "/console/monitors/{monitor_id}",
    summary="Change a monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404, 409, 422),
    openapi_extra=form_body(MONITOR_FORM_FIELDS, MONITOR_FORM_EXAMPLE),
)
async def update_monitor(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, monitor_id: uuid.UUID
) -> Response:
    """Change a monitor's settings, as `PATCH /monitors/{id}` does; a blank regex removes it."""
    require_scope(viewer, "monitors")
    monitor = await _existing_monitor(resources, monitor_id)
    fields = await checked_form(request, resources)
    values = {**NEW_MONITOR, **fields}
    title = f"Change {monitor.url}"
    try:
        changes = {"regex": None, "timeout_s": None, **_monitor_input(fields)}
        for kept in ("timeout_s", "name"):
            if changes.get(kept) is None:
                changes.pop(kept, None)  # blank keeps the current value
        if changes.get("url") == monitor.url:
            del changes["url"]  # unchanged, and shown with any password masked
        body = monitors_api.MonitorChanges.model_validate(changes)
        await monitors_api.update_monitor(monitor_id, body, resources)
    except ValidationError as error:
        form = MonitorFormPage(title, monitor_id, values, _validation_detail(error))
        return await _monitor_form(request, resources, viewer, form, 422)
    except ErrandsError as error:
        form = MonitorFormPage(title, monitor_id, values, error.detail)
        return await _monitor_form(request, resources, viewer, form, error.status_code)
    return _redirect(f"/console/monitors/{monitor_id}")


@router.post(
    "/console/monitors/{monitor_id}/delete",
    summary="Delete a monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
    openapi_extra=form_body({}, {}),
)
async def delete_monitor(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, monitor_id: uuid.UUID
) -> RedirectResponse:
    """Stop checking a website, as `DELETE /monitors/{id}` does; then show the monitors."""
    require_scope(viewer, "monitors")
    await checked_form(request, resources)
    try:
        await monitors_api.delete_monitor(monitor_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return _redirect("/console/monitors")


@router.post(
    "/console/monitors/{monitor_id}/pause",
    summary="Pause or resume a monitor",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404, 422),
    openapi_extra=form_body(
        {"paused": {"type": "string", "enum": ["true", "false"]}}, {"paused": "true"}
    ),
)
async def pause_monitor(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, monitor_id: uuid.UUID
) -> RedirectResponse:
    """Pause a monitor (no checks, no alerts) or resume it, as `PATCH /monitors/{id}` with
    `paused` does; then show it again."""
    require_scope(viewer, "monitors")
    fields = await checked_form(request, resources)
    if fields.get("paused") not in ("true", "false") or len(fields) != 1:
        raise PageError(422, "send paused=true or paused=false, and nothing else")
    changes = monitors_api.MonitorChanges(paused=fields["paused"] == "true")
    try:
        await monitors_api.update_monitor(monitor_id, changes, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return _redirect(f"/console/monitors/{monitor_id}")


NEW_CHANNEL = {"name": "", "url": ""}
DEFAULT_HOLD_MINUTES = "60"
MAX_HOLD_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class AlertsPage:
    """Where alerts go and when they are held back, with the forms to add either."""

    title: str
    channels: list[channels_api.ChannelOut]
    windows: list[MaintenanceWindow]
    channel_form: dict[str, str]
    hold_minutes: str
    error: str | None = None
    max_hold_minutes: int = MAX_HOLD_MINUTES


CHANNEL_FORM_FIELDS = {"name": {"type": "string"}, "url": {"type": "string"}}
HOLD_FORM_FIELDS = {"minutes": {"type": "string"}}


async def _alerts_page(
    request: Request,
    resources: Resources,
    viewer: Viewer,
    *,
    channel_form: dict[str, str] = NEW_CHANNEL,
    hold_minutes: str = DEFAULT_HOLD_MINUTES,
    error: ErrandsError | None = None,
) -> HTMLResponse:
    page = AlertsPage(
        title="Channels and maintenance",
        channels=await channels_api.list_channels(resources),
        windows=await monitors_api.list_maintenance(resources),
        channel_form=channel_form,
        hold_minutes=hold_minutes,
        error=None if error is None else error.detail,
    )
    status_code = 200 if error is None else error.status_code
    return await render(
        request,
        resources,
        "alerts.html",
        viewer=viewer,
        section="alerts",
        page=page,
        status_code=status_code,
    )


@router.get(
    "/console/alerts",
    summary="Channels and maintenance windows",
    response_class=HTMLResponse,
    responses=html_answers(303, 403),
)
async def alerts(request: Request, resources: ResourcesDep, viewer: ViewerDep) -> HTMLResponse:
    """The notification channels (secrets in their URLs masked) and the maintenance windows,
    past, open and future, as `GET /channels` and `GET /maintenance` give them; forms to add a
    webhook channel and to hold every monitor's alerts for a while, and to remove either."""
    require_scope(viewer, "monitors")
    return await _alerts_page(request, resources, viewer)


@router.post(
    "/console/alerts/channels",
    summary="Add a webhook channel",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 422),
    openapi_extra=form_body(CHANNEL_FORM_FIELDS, {"name": "on-call", "url": "https://a.test/"}),
)
async def create_channel(request: Request, resources: ResourcesDep, viewer: ViewerDep) -> Response:
    """Add a channel that receives each alert as a signed webhook, as `POST /channels` with
    `url` does. Apprise channels need an admin key, so only the API adds them."""
    require_scope(viewer, "monitors")
    fields = await checked_form(request, resources)
    typed = {**NEW_CHANNEL, **fields}
    try:
        body = channels_api.ChannelIn.model_validate(fields)
        if body.url is None:
            raise Unprocessable("url: give the webhook's URL; Apprise channels come by the API")
        await channels_api.create_channel(body, request, resources)
    except ValidationError as error:
        problem = Unprocessable(_validation_detail(error))
        return await _alerts_page(request, resources, viewer, channel_form=typed, error=problem)
    except ErrandsError as error:
        return await _alerts_page(request, resources, viewer, channel_form=typed, error=error)
    return _redirect("/console/alerts")


@router.post(
    "/console/alerts/channels/{channel_id}/delete",
    summary="Remove a channel",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
    openapi_extra=form_body({}, {}),
)
async def delete_channel(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, channel_id: uuid.UUID
) -> RedirectResponse:
    """Remove a channel, as `DELETE /channels/{id}` does; monitors that named it stop notifying
    it."""
    require_scope(viewer, "monitors")
    await checked_form(request, resources)
    try:
        await channels_api.delete_channel(channel_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return _redirect("/console/alerts")


@router.post(
    "/console/alerts/maintenance",
    summary="Hold every monitor's alerts for a while",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 422),
    openapi_extra=form_body(HOLD_FORM_FIELDS, {"minutes": "60"}),
)
async def create_maintenance(
    request: Request, resources: ResourcesDep, viewer: ViewerDep
) -> Response:
    """Open a maintenance window over every monitor from now for the minutes given, as
    `POST /maintenance` does; recurring windows and chosen monitors go through the API."""
    require_scope(viewer, "monitors")
    fields = await checked_form(request, resources)
    minutes = fields.get("minutes", "")
    digits = set(fields) == {"minutes"} and minutes.isdecimal() and len(minutes) <= 5
    if not digits or not 1 <= int(minutes) <= MAX_HOLD_MINUTES:
        problem = Unprocessable(f"minutes: give a whole number of minutes, 1 to {MAX_HOLD_MINUTES}")
        return await _alerts_page(request, resources, viewer, hold_minutes=minutes, error=problem)
    now = datetime.now(UTC)
    window = MaintenanceIn(
        monitors="all", starts_at=now, ends_at=now + timedelta(minutes=int(minutes))
    )
    await monitors_api.create_maintenance(window, resources)
    return _redirect("/console/alerts")


@router.post(
    "/console/alerts/maintenance/{window_id}/delete",
    summary="Remove a maintenance window",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
    openapi_extra=form_body({}, {}),
)
async def delete_maintenance(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, window_id: uuid.UUID
) -> RedirectResponse:
    """Remove a maintenance window, as `DELETE /maintenance/{id}` does: alerts it would have
    held are sent again from now on."""
    require_scope(viewer, "monitors")
    await checked_form(request, resources)
    try:
        await monitors_api.delete_maintenance(window_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return _redirect("/console/alerts")


# --- Timers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimersPage:
    title: str
    pending: int
    status: timers_api.ListedStatus | None
    timers: list[timers_api.TimerView]
    next_cursor: str | None
    # The recurring schedules, newest first (the first page; the JSON API pages through more).
    schedules: list[ScheduleView]
    more_schedules: bool

    def link(self, cursor: str | None = None) -> str:
        """This listing's URL, keeping the status filter, at `cursor` (None: the first page)."""
        query = {"status": self.status or "", "cursor": cursor or ""}
        return "/console/timers?" + urlencode({k: v for k, v in query.items() if v})


@dataclass(frozen=True)
class TimerDetailPage:
    title: str
    timer: timers_api.TimerView
    attempts: list[timers_api.TimerAttempt]
    cancellable: bool
    retryable: bool


OpenId = Annotated[
    uuid.UUID | None, Query(description="Open this one", examples=[uuid.UUID(int=1)])
]
TimerStatusFilter = Annotated[
    Literal["", "pending", "fired", "failed", "cancelled"],
    Query(description="Only timers in this state; empty for all", examples=["failed"]),
]
TIMERS_PER_PAGE = 50
SCHEDULES_ON_PAGE = 50


async def build_timers_page(
    resources: Resources, status: timers_api.ListedStatus | None, cursor: str | None
) -> TimersPage:
    try:
        rows, next_cursor = await timers_store.list_timers(
            resources.pool, status=status, limit=TIMERS_PER_PAGE, cursor=cursor
        )
    except BadCursor as error:
        raise PageError(422, str(error)) from None
    pending = await timers_store.count_pending(resources.pool)
    schedules, more_schedules = await timers_store.list_schedules(
        resources.pool, limit=SCHEDULES_ON_PAGE, cursor=None
    )
    return TimersPage(
        title=f"Timers ({pending} pending)",
        pending=pending,
        status=status,
        timers=[timers_api.TimerView.model_validate(row) for row in rows],
        next_cursor=next_cursor,
        schedules=[ScheduleView.model_validate(row) for row in schedules],
        more_schedules=more_schedules is not None,
    )


@router.get(
    "/console/timers",
    summary="Timers",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 422),
)
async def timers(
    request: Request,
    resources: ResourcesDep,
    viewer: ViewerDep,
    id: OpenId = None,
    status: TimerStatusFilter = "",
    cursor: Annotated[str | None, Query(max_length=200, description="From `Next page`")] = None,
) -> Response:
    """Timers newest first, 50 a page, filtered by status; a form to open one by its id."""
    require_scope(viewer, "timers")
    if id is not None:
        return _redirect(f"/console/timers/{id}")
    page = await build_timers_page(resources, status or None, cursor)
    return await render(
        request, resources, "timers.html", viewer=viewer, section="timers", page=page
    )


async def _timer(resources: Resources, timer_id: uuid.UUID) -> timers_api.TimerView:
    try:
        found = await timers_api.get_timer(timer_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return timers_api.TimerView.model_validate(found)


@router.get(
    "/console/timers/{timer_id}",
    summary="A timer",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
)
async def timer_detail(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, timer_id: uuid.UUID
) -> HTMLResponse:
    """One timer: its status, seconds left and the log of its webhook attempts; a cancel button
    while it is pending, a retry button once it failed."""
    require_scope(viewer, "timers")
    timer = await _timer(resources, timer_id)
    attempts = await timers_store.get_attempts(resources.pool, timer_id)
    page = TimerDetailPage(
        title=f"Timer {timer.id} ({timer.status})",
        timer=timer,
        attempts=[timers_api.TimerAttempt.model_validate(row) for row in attempts],
        cancellable=timer.status == "pending",
        retryable=timer.status == "failed",
    )
    return await render(
        request, resources, "timer.html", viewer=viewer, section="timers", page=page
    )


@router.post(
    "/console/timers/{timer_id}/cancel",
    summary="Cancel a timer",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404, 409),
    openapi_extra=form_body({}, {}),
)
async def cancel_timer(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, timer_id: uuid.UUID
) -> RedirectResponse:
    """Cancel a pending timer, as `DELETE /timer/{id}` does; then show it again."""
    require_scope(viewer, "timers")
    await checked_form(request, resources)
    try:
        await timers_api.cancel_timer(timer_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return _redirect(f"/console/timers/{timer_id}")


@router.post(
    "/console/timers/{timer_id}/retry",
    summary="Retry a failed timer",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404, 409),
    openapi_extra=form_body({}, {}),
)
async def retry_timer(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, timer_id: uuid.UUID
) -> RedirectResponse:
    """Send a failed timer's webhook again, as `POST /timer/{id}/retry` does; then show it."""
    require_scope(viewer, "timers")
    await checked_form(request, resources)
    try:
        await timers_api.retry_timer(timer_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    return _redirect(f"/console/timers/{timer_id}")


# --- Uploads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadsPage:
    title: str
    files_waiting: int
    status: conversions_api.Status | None
    uploads: list[conversions_api.UploadSummary]
    next_cursor: str | None

    def link(self, cursor: str | None = None) -> str:
        """This listing's URL, keeping the status filter, at `cursor` (None: the first page)."""
        query = {"status": self.status or "", "cursor": cursor or ""}
        return "/console/uploads?" + urlencode({k: v for k, v in query.items() if v})


@dataclass(frozen=True)
class UploadPage:
    title: str
    upload: conversions_api.UploadView


UPLOADS_PER_PAGE = 20
UploadStatusFilter = Annotated[
    Literal["", "queued", "processing", "done", "failed"],
    Query(description="Only uploads in this status; empty for all", examples=["failed"]),
]


async def build_uploads_page(
    resources: Resources, status: conversions_api.Status | None, cursor: str | None
) -> UploadsPage:
    try:
        listed = await conversions_api.list_uploads(
            resources, status=status, cursor=cursor, limit=UPLOADS_PER_PAGE
        )
    except ErrandsError as error:
        raise PageError(422, error.detail) from None
    waiting = await conversions_store.count_waiting(resources.pool)
    return UploadsPage(
        title=f"Uploads ({waiting} files waiting)",
        files_waiting=waiting,
        status=status,
        uploads=listed.uploads,
        next_cursor=listed.next_cursor,
    )


@router.get(
    "/console/uploads",
    summary="Uploads",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 422),
)
async def uploads(
    request: Request,
    resources: ResourcesDep,
    viewer: ViewerDep,
    id: OpenId = None,
    status: UploadStatusFilter = "",
    cursor: Annotated[str | None, Query(max_length=200, description="From `Next page`")] = None,
) -> Response:
    """Uploads newest first, 20 a page, filtered by status, with their files' counts; a form
    to open one by its id."""
    require_scope(viewer, "conversions")
    if id is not None:
        return _redirect(f"/console/uploads/{id}")
    page = await build_uploads_page(resources, status or None, cursor)
    return await render(
        request, resources, "uploads.html", viewer=viewer, section="uploads", page=page
    )


@router.get(
    "/console/uploads/{upload_id}",
    summary="An upload",
    response_class=HTMLResponse,
    responses=html_answers(303, 403, 404),
)
async def upload_detail(
    request: Request, resources: ResourcesDep, viewer: ViewerDep, upload_id: uuid.UUID
) -> HTMLResponse:
    """One upload: each file's status and error, its pages as PNG, and download links for the
    original and each page."""
    require_scope(viewer, "conversions")
    try:
        upload = await conversions_api.read_upload(upload_id, resources)
    except ErrandsError as error:
        raise _page_error(error) from None
    page = UploadPage(f"Upload {upload.id} ({upload.status})", upload)
    return await render(
        request, resources, "upload.html", viewer=viewer, section="uploads", page=page
    )


# --- Usage stats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsPage:
    title: str
    stats: stats_api.StatsResponse


@router.get(
    "/console/stats",
    summary="Usage stats",
    response_class=HTMLResponse,
    responses=html_answers(303, 403),
)
async def stats(request: Request, resources: ResourcesDep, viewer: ViewerDep) -> HTMLResponse:
    """Calls per route with average, p50, p95, p99 and errors: since counting began and over
    the last hour, summed over every process."""
    require_scope(viewer, "stats")
    page = StatsPage("Usage stats", await stats_api.get_stats(request, resources))
    return await render(request, resources, "stats.html", viewer=viewer, section="stats", page=page)
