"""The SVG charts, drawn without a browser: what they show and that labels are escaped."""

import re
from datetime import UTC, date, datetime, timedelta

from errands.console import charts


def bar_count(svg: str, colour: str) -> int:
    paths = re.findall(rf'<path fill="{colour}" d="([^"]*)"', svg)
    return sum(path.count("M") for path in paths)


def test_a_heartbeat_bar_has_one_bar_per_slot_coloured_by_each_check() -> None:
    svg = charts.heartbeat_bar([True, True, False, True], slots=10)

    assert bar_count(svg, charts.COLOURS["up"]) == 3
    assert bar_count(svg, charts.COLOURS["down"]) == 1
    assert bar_count(svg, charts.COLOURS["none"]) == 6
    assert 'aria-label="last 4 checks: 3 up, 1 down"' in svg
    assert svg.startswith("<svg") and svg.endswith("</svg>")


def test_a_heartbeat_bar_keeps_only_the_newest_checks() -> None:
    svg = charts.heartbeat_bar([False] * 5 + [True] * 30, slots=30)

    assert bar_count(svg, charts.COLOURS["up"]) == 30
    assert bar_count(svg, charts.COLOURS["down"]) == 0
    assert "no checks yet" in charts.heartbeat_bar([], slots=30)


def test_daily_uptime_bars_are_coloured_by_each_days_uptime_and_labels_are_escaped() -> None:
    start = date(2026, 11, 1)
    days = [
        charts.DayUptime(start, 100.0),
        charts.DayUptime(start + timedelta(days=1), 97.0),
        charts.DayUptime(start + timedelta(days=2), 50.0),
        charts.DayUptime(start + timedelta(days=3), None),
    ]
    svg = charts.uptime_days(days, '<script>alert("x")</script>')

    for colour in ("up", "degraded", "down", "none"):
        assert bar_count(svg, charts.COLOURS[colour]) == 1, colour
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "50.00% on its worst day" in svg


def test_a_response_time_line_breaks_where_no_response_came_and_labels_its_scale() -> None:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    until = since + timedelta(hours=24)
    points = [
        charts.TimePoint(since + timedelta(hours=1), 120.0),
        charts.TimePoint(since + timedelta(hours=2), 180.0),
        charts.TimePoint(since + timedelta(hours=3), None),
        charts.TimePoint(since + timedelta(hours=4), 90.0),
        charts.TimePoint(since + timedelta(hours=5), 60.0),
    ]
    svg = charts.response_time_line(points, since, until)

    assert svg.count("<polyline") == 2
    assert ">200 ms</text>" in svg, "the scale's top is the next round value above 180"
    assert "00:00 UTC" in svg
    assert "up to 180 ms" in svg


def test_a_response_time_line_without_responses_says_so() -> None:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    svg = charts.response_time_line([], since, since + timedelta(days=7))

    assert "<polyline" not in svg
    assert "no responses in this window" in svg
    assert "Dec 01" in svg
