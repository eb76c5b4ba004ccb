"""Summaries of many monitors at once, as the console reads them: last check and state, recent
beats, rollup figures, hourly points and daily uptime."""

import uuid
from datetime import UTC, datetime, timedelta

from errands.core.resources import Resources
from errands.monitors import store, summaries
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


async def add_monitor(
    resources: Resources,
    url: str,
    *,
    name: str | None = None,
    paused: bool = False,
    public: bool = False,
) -> uuid.UUID:
    fields = store.MonitorFields(
        url=url, interval_s=60, timeout_s=5, method="GET", regex=None, name=name,
        failure_threshold=1, paused=paused, public=public,
    )  # fmt: skip
    row = await store.create_monitor(resources.pool, fields)
    assert isinstance(row, dict)
    monitor_id: uuid.UUID = row["id"]
    return monitor_id


async def test_a_page_gives_each_monitor_its_state_and_last_check_and_filters_them(
    resources: Resources,
) -> None:
    now = datetime.now(UTC)
    up_id = await add_monitor(resources, "https://up.example/", name="Shop")
    down_id = await add_monitor(resources, "https://DOWN.example/", name="api")
    await add_monitor(resources, "https://new.example/", name="blog")
    await add_monitor(resources, "https://paused.example/", name="old", paused=True)
    await store_batch(
        resources,
        [
            encode_check(check(up_id, now - timedelta(minutes=2), up=False)),
            encode_check(check(up_id, now - timedelta(minutes=1), up=True, ms=42)),
            encode_check(check(down_id, now - timedelta(minutes=1), up=False)),
        ],
    )

    page = await summaries.monitor_page(resources.pool, search=None, state=None, limit=10, offset=0)
    assert page.total == 4
    assert [(m.name, m.state, m.paused) for m in page.monitors] == [
        ("Shop", "up", False),
        ("api", "down", False),
        ("blog", "new", False),
        ("old", "new", True),
    ]
    assert page.monitors[0].last_response_ms == 42
    assert page.monitors[2].last_checked_at is None

    for state, names in [("up", ["Shop"]), ("down", ["api"]), ("new", ["blog"]),
                         ("paused", ["old"])]:  # fmt: skip
        found = await summaries.monitor_page(
            resources.pool, search=None, state=state, limit=10, offset=0
        )
        assert [m.name for m in found.monitors] == names
        assert found.total == 1
    by_url = await summaries.monitor_page(
        resources.pool, search="down.EX", state=None, limit=10, offset=0
    )
    assert [m.name for m in by_url.monitors] == ["api"]
    by_name = await summaries.monitor_page(
        resources.pool, search="sho", state=None, limit=10, offset=0
    )
    assert [m.name for m in by_name.monitors] == ["Shop"]
    percent = await summaries.monitor_page(
        resources.pool, search="%", state=None, limit=10, offset=0
    )
    assert percent.total == 0, "% is a plain character, not a wildcard"

    second = await summaries.monitor_page(
        resources.pool, search=None, state=None, limit=3, offset=3
    )
    assert (second.total, len(second.monitors)) == (4, 1)
    beyond = await summaries.monitor_page(
        resources.pool, search=None, state=None, limit=2, offset=8
    )
    assert (beyond.total, beyond.monitors) == (4, [])
    assert await summaries.count_monitor_states(resources.pool) == {
        "up": 1, "degraded": 0, "down": 1, "new": 1, "paused": 1,
    }  # fmt: skip


async def test_the_status_page_sees_public_monitors_only_and_their_incidents(
    resources: Resources,
) -> None:
    now = datetime.now(UTC)
    public_id = await add_monitor(resources, "https://a.example/?token=s3cret", name="A",
                                  public=True)  # fmt: skip
    private_id = await add_monitor(resources, "https://b.example/", name="B")
    await store_batch(
        resources,
        [encode_check(check(m, now - timedelta(minutes=1), up=False))
         for m in (public_id, private_id)],
    )  # fmt: skip

    public = await summaries.public_monitors(resources.pool)
    assert [(m.id, m.name, m.state) for m in public] == [(public_id, "A", "down")]
    assert "url" not in summaries.PublicMonitor.__dataclass_fields__, "never the URL"
    incidents = await summaries.recent_incidents(
        resources.pool, [public_id], now - timedelta(days=14), limit=10
    )
    assert [(i.monitor_id, i.state, i.resolved_at) for i in incidents] == [
        (public_id, "down", None)
    ]


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

    beats = await summaries.recent_beats(resources.pool, [busy, quiet], count=30)
    assert beats[quiet] == []
    assert len(beats[busy]) == 30
    assert [beat.checked_at for beat in beats[busy]] == sorted(
        result.checked_at for result in recent[:30]
    )
    assert [beat.up for beat in beats[busy]][-1] == recent[0].up

    figures = await summaries.recent_figures(resources.pool, [busy, quiet])
    assert figures[quiet] == summaries.RecentFigures(None, None, None)
    assert figures[busy].uptime_24h_pct == 75.0
    assert figures[busy].uptime_30d_pct == 50.0  # 30 up of 40 recent + 20 old down
    p95 = figures[busy].p95_24h_ms
    assert p95 is not None and 300 <= p95 <= 420

    points = await summaries.hourly_points(resources.pool, busy, now - timedelta(days=1))
    assert sum(point.checks for point in points) == 40
    assert all(point.avg_ms is not None for point in points)

    days = await summaries.daily_uptime(
        resources.pool, [busy, quiet], (now - timedelta(days=30)).date()
    )
    assert days[quiet] == []
    assert sum(day.checks for day in days[busy]) == 60
    assert sum(day.up for day in days[busy]) == 30
