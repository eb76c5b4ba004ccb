"""The public status page: the monitors marked public, by name and state only, 90 days of daily
uptime each, and open and recent incidents. No key is needed; the page is the same for every
visitor, so it is rendered once per ERRANDS_STATUS_CACHE_S and cached by browsers and proxies
as long."""

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from markupsafe import Markup

from errands.console import charts
from errands.console.openapi import html_answers
from errands.console.templating import SECURITY_HEADERS, TEMPLATES
from errands.core.resources import Resources, get_resources
from errands.monitors import summaries

__all__ = ["StatusIncident", "StatusMonitor", "StatusPage", "build_status_page", "router"]

router = APIRouter(tags=["console"])

DAYS = 90
INCIDENT_DAYS = 14
INCIDENTS_SHOWN = 50


@dataclass(frozen=True)
class StatusMonitor:
    name: str
    state: str
    uptime_pct: float | None  # over the 90 days
    days: Markup


@dataclass(frozen=True)
class StatusIncident:
    """An incident as the public sees it: no cause, which may name hosts or addresses."""

    monitor_name: str
    state: str
    started_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class StatusPage:
    title: str
    headline: str
    monitors: list[StatusMonitor]
    open_incidents: list[StatusIncident]
    recent_incidents: list[StatusIncident]
    generated_at: datetime


async def build_status_page(resources: Resources) -> StatusPage:
    pool = resources.pool
    public = await summaries.public_monitors(pool)
    ids = [monitor.id for monitor in public]
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=DAYS - 1)
    daily = await summaries.daily_uptime(pool, ids, first_day)
    names = {monitor.id: monitor.name for monitor in public}
    monitors = []
    for monitor in public:
        measured = {day.day: day for day in daily[monitor.id]}
        bars = []
        for offset in range(DAYS):
            day = first_day + timedelta(days=offset)
            figures = measured.get(day)
            pct = (
                None if figures is None or not figures.checks else 100 * figures.up / figures.checks
            )
            bars.append(charts.DayUptime(day, pct))
        checks = sum(day.checks for day in daily[monitor.id])
        up = sum(day.up for day in daily[monitor.id])
        monitors.append(
            StatusMonitor(
                name=monitor.name,
                state=monitor.state,
                uptime_pct=round(100 * up / checks, 3) if checks else None,
                days=charts.uptime_days(bars, f"{monitor.name}, daily uptime"),
            )
        )
    since = datetime.now(UTC) - timedelta(days=INCIDENT_DAYS)
    incidents = [
        StatusIncident(
            names[incident.monitor_id],
            incident.state,
            incident.started_at,
            incident.resolved_at,
        )
        for incident in await summaries.recent_incidents(pool, ids, since, INCIDENTS_SHOWN)
    ]
    troubled = [monitor for monitor in monitors if monitor.state in ("down", "degraded")]
    headline = (
        "All systems up"
        if not troubled
        else f"{len(troubled)} of {len(monitors)} {'is' if len(troubled) == 1 else 'are'} "
        "having trouble"
    )
    return StatusPage(
        title=f"Status: {headline.lower()}",
        headline=headline,
        monitors=monitors,
        open_incidents=[incident for incident in incidents if incident.resolved_at is None],
        recent_incidents=[incident for incident in incidents if incident.resolved_at is not None],
        generated_at=datetime.now(UTC),
    )


@dataclass(frozen=True)
class _Rendered:
    body: bytes
    etag: str
    until: float  # time.monotonic()


@router.get(
    "/status",
    summary="Public status page",
    response_class=Response,
    responses=html_answers(304),
)
async def status_page(
    request: Request, resources: Annotated[Resources, Depends(get_resources)]
) -> Response:
    """The monitors marked public, their state and 90 days of daily uptime, with open and
    recent incidents. Public (no key), the same for everyone, cacheable."""
    cache_s = resources.settings.status_cache_s
    rendered: _Rendered | None = getattr(request.app.state, "status_page", None)
    if rendered is None or rendered.until <= time.monotonic():
        page = await build_status_page(resources)
        body = TEMPLATES.get_template("status.html").render(page=page).encode()
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        rendered = _Rendered(body, etag, time.monotonic() + cache_s)
        request.app.state.status_page = rendered
    headers = {
        **SECURITY_HEADERS,
        "Cache-Control": f"public, max-age={int(cache_s)}" if cache_s else "no-cache",
        "ETag": rendered.etag,
    }
    if request.headers.get("if-none-match") == rendered.etag:
        return Response(status_code=304, headers=headers)
    return Response(rendered.body, media_type="text/html; charset=utf-8", headers=headers)
