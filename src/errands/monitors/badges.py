"""Badges: small SVG images of a monitor's status, uptime and response time, for READMEs and
dashboards. A public monitor's badges need no key; a private monitor's are 404 without one."""

import html
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from errands.core.errors import NotFound
from errands.core.resources import Resources, get_resources
from errands.monitors import store

__all__ = ["badge_svg", "router"]

router = APIRouter(tags=["monitors"])

# Badges are cached by browsers and proxies this long: a minute late is fine for a badge.
CACHE_S = 60
COLOURS = {
    "up": "#2e9e44",
    "degraded": "#d98a00",
    "down": "#d0312d",
    "unknown": "#8a8a8a",
}
# Verdana 11px averages about this wide per character, which is what badge readers expect.
CHAR_WIDTH_PX = 6.5
PADDING_PX = 10
BADGE_WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def _width(text: str) -> int:
    return round(len(text) * CHAR_WIDTH_PX) + 2 * PADDING_PX


def badge_svg(label: str, value: str, colour: str) -> str:
    """A two-part flat badge: grey label on the left, coloured value on the right."""
    left, right = _width(label), _width(value)
    total = left + right
    label_text, value_text = html.escape(label), html.escape(value)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img"'
        f' aria-label="{label_text}: {value_text}">'
        f"<title>{label_text}: {value_text}</title>"
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{html.escape(colour)}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif"'
        ' font-size="11">'
        f'<text x="{left / 2}" y="14">{label_text}</text>'
        f'<text x="{left + right / 2}" y="14">{value_text}</text>'
        "</g></svg>"
    )


ResourcesDep = Annotated[Resources, Depends(get_resources)]
SVG = {"image/svg+xml": {"example": badge_svg("status", "up", COLOURS["up"])}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The badge", "content": SVG},
    404: {"description": "No monitor has this id, or it is private and no key was sent"},
}


async def _visible_monitor(
    request: Request, resources: Resources, monitor_id: uuid.UUID
) -> store.Row:
    """The monitor, if it is public or the request carries a valid key."""
    row = await store.get_monitor(resources.pool, monitor_id)
    keyed = getattr(request.state, "api_key", None) is not None
    if row is None or not (row["public"] or keyed):
        raise NotFound(f"no public monitor {monitor_id}")
    return row


def _svg(row: store.Row, label: str, value: str, colour: str) -> Response:
    visibility = "public" if row["public"] else "private"
    return Response(
        badge_svg(label, value, colour),
        media_type="image/svg+xml",
        headers={
            "Cache-Control": f"{visibility}, max-age={CACHE_S}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/monitors/{monitor_id}/badge/status.svg",
    summary="A monitor's status badge",
    response_class=Response,
    responses=RESPONSES,
)
async def status_badge(
    monitor_id: uuid.UUID, request: Request, resources: ResourcesDep
) -> Response:
    """up, degraded, down, paused or unknown (not checked yet), as an SVG badge."""
    row = await _visible_monitor(request, resources, monitor_id)
    state = "paused" if row["paused"] else row["state"]
    shown = {"new": "unknown"}.get(state, state)
    return _svg(row, "status", shown, COLOURS.get(shown, COLOURS["unknown"]))


@router.get(
    "/monitors/{monitor_id}/badge/uptime.svg",
    summary="A monitor's uptime badge",
    response_class=Response,
    responses={**RESPONSES, 422: {"description": "A window other than 24h, 7d or 30d"}},
)
async def uptime_badge(
    monitor_id: uuid.UUID,
    request: Request,
    resources: ResourcesDep,
    window: Annotated[Literal["24h", "7d", "30d"], Query()] = "24h",
) -> Response:
    """The share of checks that were up over the window, as an SVG badge."""
    row = await _visible_monitor(request, resources, monitor_id)
    until = datetime.now(UTC)
    figures = await store.uptime_from_rollups(
        resources.pool, monitor_id, until - BADGE_WINDOWS[window], until
    )
    percent = figures.uptime_pct
    if percent is None:
        return _svg(row, f"uptime {window}", "no checks", COLOURS["unknown"])
    colour = (
        COLOURS["up"]
        if percent >= 99
        else COLOURS["degraded"]
        if percent >= 95
        else COLOURS["down"]
    )
    return _svg(row, f"uptime {window}", f"{percent:.2f}%", colour)


@router.get(
    "/monitors/{monitor_id}/badge/response.svg",
    summary="A monitor's response time badge",
    response_class=Response,
    responses=RESPONSES,
)
async def response_badge(
    monitor_id: uuid.UUID, request: Request, resources: ResourcesDep
) -> Response:
    """The median response time of the last 24 hours, as an SVG badge; orange when slower
    than the monitor's max_response_ms."""
    row = await _visible_monitor(request, resources, monitor_id)
    until = datetime.now(UTC)
    figures = await store.uptime_from_rollups(
        resources.pool, monitor_id, until - BADGE_WINDOWS["24h"], until
    )
    if figures.p50_ms is None:
        return _svg(row, "response", "no checks", COLOURS["unknown"])
    slow = row["max_response_ms"] is not None and figures.p50_ms > row["max_response_ms"]
    return _svg(row, "response", f"{figures.p50_ms:.0f} ms", COLOURS["degraded" if slow else "up"])
