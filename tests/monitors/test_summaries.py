"""Summaries of many monitors at once, as the console reads them: last check and state, recent
beats, rollup figures, hourly points and daily uptime."""

import uuid
from datetime import UTC, datetime, timedelta

from errands.core.resources import Resources
from errands.monitors import store
from errands.monitors.results import CheckResult, encode_check
from errands.monitors.sink import store_batch


def check(monitor_id: uuid.UUID, at: datetime, *, up: bool, ms: float = 100.0) -> CheckResult:
    return CheckResult(
        check_id=uuid.uuid4(),
        monitor_id=monitor_id,
        checked_at=at,
        url="http://example.test/",
        status_code=200 if up else 503,
        response_time_ms=ms,
        dns_ms=None,
        connect_ms=None,
        tls_ms=None,
        first_byte_ms=None,
        regex_matched=None,
        error_kind=None,
        error=None,
    )


async def add_monitor(resources: Resources, url: str) -> uuid.UUID:
    fields = store.MonitorFields(url=url, interval_s=60, timeout_s=5, method="GET", regex=None)
    row = await store.create_monitor(resources.pool, fields)
    assert row is not None
    monitor_id: uuid.UUID = row["id"]
    return monitor_id


async def test_a_page_gives_each_monitor_its_last_check_and_filters_by_state_and_search(
    resources: Resources,
) -> None:
    now = datetime.now(UTC)
    up_id = await add_monitor(resources, "https://up.example/")
    down_id = await add_monitor(resources, "https://DOWN.example/")
    await add_monitor(resources, "https://new.example/")
    await store_batch(
        resources,
        [
            encode_check(check(up_id, now - timedelta(minutes=2), up=False)),
            encode_check(check(up_id, now - timedelta(minutes=1), up=True, ms=42)),
            encode_check(check(down_id, now - timedelta(minutes=1), up=False)),
        ],
    )

    page = await store.monitor_page(resources.pool, search=None, state=None, limit=10, offset=0)
    assert page.total == 3
    assert [(m.url, m.last_up) for m in page.monitors] == [
        ("https://DOWN.example/", False),
        ("https://new.example/", None),
        ("https://up.example/", True),
    ]
    assert page.monitors[2].last_response_ms == 42

    for state, urls in [
        ("up", ["https://up.example/"]),
        ("down", ["https://DOWN.example/"]),
        ("pending", ["https://new.example/"]),
    ]:
        found = await store.monitor_page(
            resources.pool, search=None, state=state, limit=10, offset=0
        )
        assert [m.url for m in found.monitors] == urls
        assert found.total == 1
    searched = await store.monitor_page(
        resources.pool, search="down.EX", state=None, limit=10, offset=0
    )
    assert [m.url for m in searched.monitors] == ["https://DOWN.example/"]
    percent = await store.monitor_page(resources.pool, search="%", state=None, limit=10, offset=0)
    assert percent.total == 0, "% is a plain character, not a wildcard"

    second = await store.monitor_page(resources.pool, search=None, state=None, limit=2, offset=2)
    assert (second.total, len(second.monitors)) == (3, 1)
    beyond = await store.monitor_page(resources.pool, search=None, state=None, limit=2, offset=8)
    assert (beyond.total, beyond.monitors) == (3, [])
    assert await store.count_monitor_states(resources.pool) == {"up": 1, "down": 1, "pending": 1}


async def test_beats_and_figures_come_per_monitor_from_checks_and_rollups(
    resources: Resources,
) -> None:
    now = datetime.now(UTC)
    busy = await add_monitor(resources, "https://busy.example/")
    quiet = await add_monitor(resources, "https://quiet.example/")
    recent = [
        check(busy, now - timedelta(minutes=n), up=n % 4 != 0, ms=10.0 * n) for n in range(1, 41)
    ]
    old = [check(busy, now - timedelta(days=10, minutes=n), up=False) for n in range(20)]
    await store_batch(resources, [encode_check(result) for result in recent + old])

    beats = await store.recent_beats(resources.pool, [busy, quiet], count=30)
    assert beats[quiet] == []
    assert len(beats[busy]) == 30
    assert [beat.checked_at for beat in beats[busy]] == sorted(
        result.checked_at for result in recent[:30]
    )
    assert [beat.up for beat in beats[busy]][-1] == recent[0].up

    figures = await store.recent_figures(resources.pool, [busy, quiet])
    assert figures[quiet] == store.RecentFigures(None, None, None)
    assert figures[busy].uptime_24h_pct == 75.0
    assert figures[busy].uptime_30d_pct == 50.0  # 30 up of 40 recent + 20 old down
    p95 = figures[busy].p95_24h_ms
    assert p95 is not None and 300 <= p95 <= 420

    points = await store.hourly_points(resources.pool, busy, now - timedelta(days=1))
    assert sum(point.checks for point in points) == 40
    assert all(point.avg_ms is not None for point in points)

    days = await store.daily_uptime(
        resources.pool, [busy, quiet], (now - timedelta(days=30)).date()
    )
    assert days[quiet] == []
    assert sum(day.checks for day in days[busy]) == 60
    assert sum(day.up for day in days[busy]) == 30
