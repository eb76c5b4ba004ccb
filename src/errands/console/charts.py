"""SVG charts drawn on the server: small pure functions from figures to markup, with fixed words
and escaped labels only, so a page needs no script to show them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from markupsafe import Markup, escape

__all__ = [
    "COLOURS",
    "DayUptime",
    "TimePoint",
    "heartbeat_bar",
    "response_time_line",
    "uptime_colour",
    "uptime_days",
]

# Colours with at least 3:1 contrast against the white page (WCAG for graphical objects).
COLOURS = {
    "up": "#1a7f37",
    "down": "#cf222e",
    "degraded": "#9a6700",
    "none": "#8c959f",
    "line": "#0969da",
    "grid": "#d0d7de",
    "text": "#57606a",
}

BAR_WIDTH = 4
BAR_GAP = 2
BAR_HEIGHT = 20


@dataclass(frozen=True)
class TimePoint:
    at: datetime
    ms: float | None  # None: no response in this slot


@dataclass(frozen=True)
class DayUptime:
    day: date
    uptime_pct: float | None  # None: no check that day


def _bars(slots: Sequence[str], height: int) -> str:
    """One path per colour rather than one rect per bar: a tenth of the bytes."""
    paths: dict[str, list[str]] = {}
    for position, colour in enumerate(slots):
        x = position * (BAR_WIDTH + BAR_GAP)
        paths.setdefault(colour, []).append(f"M{x} 0h{BAR_WIDTH}v{height}h-{BAR_WIDTH}z")
    return "".join(f'<path fill="{colour}" d="{"".join(d)}"/>' for colour, d in paths.items())


def _svg(width: int, height: int, label: str, body: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>{body}</svg>"
    )


def heartbeat_bar(states: Sequence[bool], slots: int = 30) -> Markup:
    """The last `slots` checks, oldest on the left, up green and down red; slots before the
    first check are grey."""
    recent = list(states)[-slots:]
    colours = [COLOURS["none"]] * (slots - len(recent))
    colours += [COLOURS["up"] if up else COLOURS["down"] for up in recent]
    down = sum(1 for up in recent if not up)
    label = (
        f"last {len(recent)} checks: {len(recent) - down} up, {down} down"
        if recent
        else "no checks yet"
    )
    return _svg(
        slots * (BAR_WIDTH + BAR_GAP) - BAR_GAP, BAR_HEIGHT, label, _bars(colours, BAR_HEIGHT)
    )


def uptime_colour(uptime_pct: float | None) -> str:
    if uptime_pct is None:
        return COLOURS["none"]
    if uptime_pct >= 99.9:
        return COLOURS["up"]
    if uptime_pct >= 95:
        return COLOURS["degraded"]
    return COLOURS["down"]


def uptime_days(days: Sequence[DayUptime], label: str) -> Markup:
    """One bar per day, oldest on the left, coloured by that day's uptime (grey: no checks)."""
    measured = [day.uptime_pct for day in days if day.uptime_pct is not None]
    overall = f"{min(measured):.2f}% on its worst day" if measured else "no checks"
    text = f"{label}: {len(days)} days, {overall}"
    bars = _bars([uptime_colour(day.uptime_pct) for day in days], 24)
    return _svg(len(days) * (BAR_WIDTH + BAR_GAP) - BAR_GAP, 24, text, bars)


LINE_WIDTH = 720
LINE_HEIGHT = 160
LEFT = 48  # room for the millisecond labels
BOTTOM = 20  # room for the time labels


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten at or above `value`."""
    step = 1.0
    while step * 10 <= value:
        step *= 10
    for factor in (1, 2, 5, 10):
        if value <= factor * step:
            return factor * step
    return 10 * step


def response_time_line(points: Sequence[TimePoint], since: datetime, until: datetime) -> Markup:
    """Response time over [since, until): a line through the points that had a response, broken
    where one had none, over a grid with the top value and the window's ends labelled."""
    plot_width = LINE_WIDTH - LEFT
    plot_height = LINE_HEIGHT - BOTTOM
    span = max((until - since).total_seconds(), 1.0)
    top = _nice_ceiling(max((point.ms for point in points if point.ms is not None), default=1.0))

    segments: list[list[str]] = [[]]
    for point in points:
        if point.ms is None:
            segments.append([])
            continue
        x = LEFT + plot_width * (point.at - since).total_seconds() / span
        y = plot_height * (1 - point.ms / top)
        segments[-1].append(f"{x:.1f},{y:.1f}")
    lines = "".join(
        f'<polyline fill="none" stroke="{COLOURS["line"]}" stroke-width="1.5" '
        f'points="{" ".join(segment)}"/>'
        for segment in segments
        if segment
    )
    grid = "".join(
        f'<line x1="{LEFT}" x2="{LINE_WIDTH}" y1="{y:.1f}" y2="{y:.1f}" '
        f'stroke="{COLOURS["grid"]}"/>'
        for y in (0.0, plot_height / 2, float(plot_height))
    )
    text = f'fill="{COLOURS["text"]}" font-size="11" font-family="sans-serif"'
    labels = (
        f'<text x="{LEFT - 4}" y="10" text-anchor="end" {text}>{top:g} ms</text>'
        f'<text x="{LEFT - 4}" y="{plot_height}" text-anchor="end" {text}>0</text>'
        f'<text x="{LEFT}" y="{LINE_HEIGHT - 4}" {text}>{_moment(since, span)}</text>'
        f'<text x="{LINE_WIDTH}" y="{LINE_HEIGHT - 4}" text-anchor="end" {text}>'
        f"{_moment(until, span)}</text>"
    )
    answered = [point.ms for point in points if point.ms is not None]
    label = (
        f"response time, {len(answered)} points, up to {max(answered):.0f} ms"
        if answered
        else "response time: no responses in this window"
    )
    return _svg(LINE_WIDTH, LINE_HEIGHT, label, grid + lines + labels)


def _moment(at: datetime, span_s: float) -> str:
    return f"{at:%H:%M} UTC" if span_s <= timedelta(days=1).total_seconds() else f"{at:%b %d}"
