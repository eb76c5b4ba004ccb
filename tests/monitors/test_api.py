"""The monitors API: registering sites, validation, and reading checks and uptime."""

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from errands.core.db import Pool
from errands.core.resources import Resources
from errands.monitors.results import CheckResult, encode_check
from errands.monitors.sink import store_batch


async def create(api: httpx.AsyncClient, **fields: object) -> dict[str, object]:
    response = await api.post("/monitors", json={"interval_s": 60, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_a_monitor_is_created_listed_read_changed_and_deleted(
    api: httpx.AsyncClient,
) -> None:
    monitor = await create(api, url="https://example.com/", regex="Example")
    assert monitor["interval_s"] == 60
    assert monitor["timeout_s"] == 10.0
    assert monitor["method"] == "GET"
    assert monitor["regex"] == "Example"
    assert monitor["next_check_at"] is not None

    listed = (await api.get("/monitors")).json()
    assert [item["id"] for item in listed] == [monitor["id"]]
    assert (await api.get(f"/monitors/{monitor['id']}")).json() == monitor

    patched = await api.patch(
        f"/monitors/{monitor['id']}", json={"interval_s": 30, "regex": None, "method": "HEAD"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["interval_s"] == 30
    assert patched.json()["regex"] is None
    assert patched.json()["method"] == "HEAD"
    assert patched.json()["url"] == "https://example.com/"

    assert (await api.delete(f"/monitors/{monitor['id']}")).status_code == 204
    assert (await api.get(f"/monitors/{monitor['id']}")).status_code == 404
    assert (await api.delete(f"/monitors/{monitor['id']}")).status_code == 404
    assert (await api.get("/monitors")).json() == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"url": "https://example.com/", "interval_s": 4}, "greater than or equal to 5"),
        ({"url": "https://example.com/", "interval_s": 60, "regex": "(unclosed"}, "invalid regex"),
        ({"url": "ftp://example.com/", "interval_s": 60}, "url is not allowed"),
        ({"url": "not a url", "interval_s": 60}, "url is not allowed"),
        ({"url": "https://example.com/", "interval_s": 60, "method": "POST"}, "GET"),
        (
            {"url": "https://example.com/", "interval_s": 60, "method": "HEAD", "regex": "x"},
            "a regex needs method GET",
        ),
        # Each would be unrolled into 100,000 copies when compiled (and "x{4294967294}" into
        # more than the memory of the machine).
        (
            {"url": "https://example.com/", "interval_s": 60, "regex": "x{100000}"},
            "repeat counts are too large",
        ),
        (
            {"url": "https://example.com/", "interval_s": 60, "regex": "(?:(?:x{100}){10}){100}"},
            "repeat counts are too large",
        ),
        (
            {"url": "https://example.com/", "interval_s": 60, "regex": "(?x) x{100 000}"},
            "repeat counts are too large",
        ),
        (
            {"url": "https://example.com/", "interval_s": 60, "regex": "(?x) x{1#}\n00000}"},
            "a comment inside a repeat count",
        ),
        ({"url": "https://example.com/", "interval_s": 10, "timeout_s": 20}, "timeout_s"),
        ({"url": "https://example.com/", "interval_s": 60, "timeout_s": 0}, "greater than 0"),
        ({"interval_s": 60}, "url"),
    ],
)
async def test_invalid_monitors_are_refused_with_a_clear_reason(
    api: httpx.AsyncClient, body: dict[str, object], detail: str
) -> None:
    response = await api.post("/monitors", json=body)
    assert response.status_code == 422
    assert detail in str(response.json()["detail"])
    assert (await api.get("/monitors")).json() == []


@pytest.mark.parametrize(
    "pattern", [r"\d{4}-\d{2}-\d{2}", ".{1000}", "a{0,100000}", "(?x) \\# x{5}"]
)
async def test_ordinary_repeats_are_accepted(api: httpx.AsyncClient, pattern: str) -> None:
    body = {"url": "https://example.com/", "interval_s": 60, "regex": pattern}
    response = await api.post("/monitors", json=body)
    assert response.status_code == 201, response.text


async def test_a_blocked_address_is_refused_when_private_targets_are_not_allowed(
    resources: Resources,
) -> None:
    from tests.fixtures.app import serve_app

    settings = resources.settings.model_copy(update={"allow_private_targets": False})
    async with serve_app(settings) as running:
        response = await running.client.post(
            "/monitors", json={"url": "http://127.0.0.1/", "interval_s": 60}
        )
    assert response.status_code == 422
    assert "url is not allowed" in response.json()["detail"]


async def test_a_monitor_without_a_name_is_called_by_its_host_alone(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    url = "HTTPS://ops:s3cret@Status.Example.com:8443/health"
    created = await api.post("/monitors", json={"url": url, "interval_s": 60, "public": True})

    assert created.status_code == 201, created.text
    assert created.json()["name"] == "status.example.com"
    assert [m["name"] for m in (await api.get("/monitors")).json()] == ["status.example.com"]
    status_page = await api.get("/status")
    assert "status.example.com" in status_page.text
    assert "s3cret" not in status_page.text
    # The API, the console, the status page and the alerts share this one rule.
    async with pool.connection() as conn:
        for name, other_url, shown in (
            (None, "http://[::1]:8080/", "[::1]"),
            (None, "tcp://DB.internal:5432", "db.internal"),
            ("API", "https://u:p@x.example/", "API"),
        ):
            cursor = await conn.execute(
                "SELECT monitor_display_name(%s, %s) AS shown", (name, other_url)
            )
            assert await cursor.fetchone() == {"shown": shown}


async def test_the_same_url_twice_is_a_conflict(api: httpx.AsyncClient) -> None:
    first = await create(api, url="https://example.com/")
    response = await api.post("/monitors", json={"url": "https://example.com/", "interval_s": 5})
    assert response.status_code == 409
    other = await create(api, url="https://example.org/")
    clash = await api.patch(f"/monitors/{other['id']}", json={"url": "https://example.com/"})
    assert clash.status_code == 409
    assert (await api.get(f"/monitors/{first['id']}")).status_code == 200


async def test_bad_changes_and_ids_are_4xx_never_500(api: httpx.AsyncClient) -> None:
    monitor = await create(api, url="https://example.com/")
    path = f"/monitors/{monitor['id']}"
    assert (await api.patch(path, json={"regex": "[z-a]"})).status_code == 422
    assert (await api.patch(path, json={"url": None})).status_code == 422
    assert (await api.patch(path, json={"interval_s": 1})).status_code == 422
    assert (await api.patch(path, json={"colour": "red"})).status_code == 422
    assert (await api.get(path)).json() == monitor
    for bad in ("/monitors/nope", "/monitors/123/checks", "/monitors/%20/uptime"):
        assert (await api.get(bad)).status_code == 422
    missing = f"/monitors/{uuid.uuid4()}"
    for url in (missing, f"{missing}/checks", f"{missing}/uptime"):
        assert (await api.get(url)).status_code == 404
    assert (await api.patch(missing, json={"interval_s": 60})).status_code == 404


def a_check(monitor_id: uuid.UUID, at: datetime, up: bool, ms: float) -> CheckResult:
    return CheckResult(
        check_id=uuid.uuid4(),
        monitor_id=monitor_id,
        checked_at=at,
        url="https://example.com/",
        status_code=200 if up else 503,
        response_time_ms=ms,
        dns_ms=None,
        connect_ms=1.5,
        tls_ms=None,
        first_byte_ms=ms - 1,
        regex_matched=None,
        error_kind=None,
        error=None,
    )


async def test_checks_are_listed_newest_first_within_the_window(
    api: httpx.AsyncClient, resources: Resources
) -> None:
    monitor = await create(api, url="https://example.com/")
    monitor_id = uuid.UUID(str(monitor["id"]))
    now = datetime.now(UTC)
    checks = [
        a_check(monitor_id, now - timedelta(minutes=n), n % 2 == 0, 10 + n) for n in range(10)
    ]
    await store_batch(resources, [encode_check(check) for check in checks])

    listed = (await api.get(f"/monitors/{monitor_id}/checks")).json()
    assert [item["check_id"] for item in listed] == [str(check.check_id) for check in checks]
    assert listed[0]["connect_ms"] == 1.5
    assert listed[1]["up"] is False and listed[1]["status_code"] == 503

    since = (now - timedelta(minutes=5, seconds=30)).isoformat()
    until = (now - timedelta(minutes=1, seconds=30)).isoformat()
    window = await api.get(
        f"/monitors/{monitor_id}/checks", params={"since": since, "until": until, "limit": 3}
    )
    assert [item["check_id"] for item in window.json()] == [
        str(check.check_id) for check in checks[2:5]
    ]
    backwards = await api.get(
        f"/monitors/{monitor_id}/checks", params={"since": until, "until": since}
    )
    assert backwards.status_code == 422
    assert (await api.get(f"/monitors/{monitor_id}/checks", params={"limit": 0})).status_code == 422


async def test_uptime_over_short_and_long_windows(
    api: httpx.AsyncClient, resources: Resources
) -> None:
    monitor = await create(api, url="https://example.com/")
    monitor_id = uuid.UUID(str(monitor["id"]))
    now = datetime.now(UTC)
    # Two days of checks every 5 minutes; one in four is down, latency cycles 10..109 ms.
    checks = [
        a_check(monitor_id, now - timedelta(minutes=5 * n, seconds=1), n % 4 != 0, 10 + n % 100)
        for n in range(2 * 24 * 12)
    ]
    await store_batch(resources, [encode_check(check) for check in checks])

    hour = (await api.get(f"/monitors/{monitor_id}/uptime", params={"window": "1h"})).json()
    recent = [c for c in checks if c.checked_at > now - timedelta(hours=1)]
    assert hour["source"] == "checks"
    assert hour["checks"] == len(recent) == 12
    assert hour["uptime_pct"] == round(100 * sum(c.up for c in recent) / len(recent), 3)

    day = (await api.get(f"/monitors/{monitor_id}/uptime", params={"window": "24h"})).json()
    last_day = [c for c in checks if c.checked_at > now - timedelta(days=1)]
    assert day["source"] == "rollups"
    assert day["window_s"] == 86400
    assert day["checks"] == len(last_day)
    assert day["uptime_pct"] == round(100 * sum(c.up for c in last_day) / len(last_day), 3)
    exact = sorted(c.response_time_ms or 0 for c in last_day)
    assert day["p50_ms"] == pytest.approx(exact[len(exact) // 2], rel=0.125)
    assert day["p95_ms"] == pytest.approx(exact[int(len(exact) * 0.95)], rel=0.125)

    month = (await api.get(f"/monitors/{monitor_id}/uptime", params={"window": "30d"})).json()
    assert month["checks"] == len(checks)
    seconds = (await api.get(f"/monitors/{monitor_id}/uptime", params={"window": "7200"})).json()
    assert seconds["window_s"] == 7200

    for bad in ("yesterday", "0", "10s", "9999d", "-1h"):
        response = await api.get(f"/monitors/{monitor_id}/uptime", params={"window": bad})
        assert response.status_code == 422, bad


async def test_uptime_without_checks_has_no_percentage(api: httpx.AsyncClient) -> None:
    monitor = await create(api, url="https://example.com/")
    for window in ("1h", "30d"):
        body = (
            await api.get(f"/monitors/{monitor['id']}/uptime", params={"window": window})
        ).json()
        assert body["checks"] == 0
        assert body["uptime_pct"] is None
        assert body["p50_ms"] is None


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"failure_threshold": 0}, "greater than or equal to 1"),
        ({"success_threshold": 101}, "less than or equal to 100"),
        ({"expected_status": "200-"}, "invalid expected_status"),
        ({"expected_status": "299-200"}, "ends before it starts"),
        ({"expected_status": "600x"}, "invalid expected_status"),
        ({"max_response_ms": 0}, "greater than 0"),
        ({"max_response_ms": 20_000, "timeout_s": 10}, "max_response_ms"),
        ({"regex_mode": "sometimes"}, "must_match"),
        ({"tls_expiry_days": -1}, "greater than or equal to 0"),
        ({"channels": ["not-a-uuid"]}, "valid UUID"),
        ({"paused": "perhaps"}, "bool"),
        ({"name": ""}, "at least 1"),
    ],
)
async def test_invalid_alert_settings_are_refused(
    api: httpx.AsyncClient, fields: dict[str, object], detail: str
) -> None:
    response = await api.post(
        "/monitors", json={"url": "https://example.com/", "interval_s": 60, **fields}
    )
    assert response.status_code == 422
    assert detail in str(response.json()["detail"])
    assert (await api.get("/monitors")).json() == []


async def test_alert_settings_have_defaults_and_can_be_changed(api: httpx.AsyncClient) -> None:
    monitor = await create(api, url="https://example.com/status")
    assert monitor["name"] == "example.com"
    assert monitor["failure_threshold"] == 3
    assert monitor["success_threshold"] == 1
    assert monitor["expected_status"] == "200-399"
    assert monitor["regex_mode"] == "must_match"
    assert monitor["tls_expiry_days"] == 14
    assert (monitor["max_response_ms"], monitor["paused"], monitor["public"]) == (
        None,
        False,
        False,
    )
    assert monitor["state"] == "new"
    changed = await api.patch(
        f"/monitors/{monitor['id']}",
        json={"name": "Status page", "expected_status": "200, 301-302", "paused": True},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Status page"
    assert changed.json()["expected_status"] == "200,301-302"
    assert changed.json()["next_check_at"] is None  # paused: not checked
    resumed = await api.patch(f"/monitors/{monitor['id']}", json={"paused": False, "name": None})
    assert resumed.json()["next_check_at"] is not None
    assert resumed.json()["name"] == "example.com"
    assert (await api.patch(f"/monitors/{monitor['id']}", json={"paused": None})).status_code == 422


async def test_tcp_monitors_are_accepted_and_checked_for_shape(api: httpx.AsyncClient) -> None:
    monitor = await create(api, url="tcp://db.example.com:5432")
    assert monitor["name"] == "db.example.com"
    for bad in ("tcp://db.example.com", "tcp://db.example.com:5432/path", "tcp://:5432"):
        response = await api.post("/monitors", json={"url": bad, "interval_s": 60})
        assert response.status_code == 422, bad
    with_regex = await api.post(
        "/monitors", json={"url": "tcp://db.example.com:5433", "interval_s": 60, "regex": "x"}
    )
    assert with_regex.status_code == 422


async def test_credentials_in_a_url_are_masked_in_every_answer(api: httpx.AsyncClient) -> None:
    secret_url = "https://alice:s3cret@example.com/private"
    monitor = await create(api, url=secret_url)
    assert monitor["url"] == "https://***@example.com/private"
    answers = [
        await api.get("/monitors"),
        await api.get(f"/monitors/{monitor['id']}"),
        await api.patch(f"/monitors/{monitor['id']}", json={"interval_s": 30}),
        await api.post("/monitors", json={"url": secret_url, "interval_s": 60}),
    ]
    for answer in answers:
        assert "s3cret" not in answer.text and "alice" not in answer.text, answer.text


async def test_a_duplicate_url_names_the_monitor_that_has_it(api: httpx.AsyncClient) -> None:
    first = await create(api, url="https://example.com/")
    again = await api.post("/monitors", json={"url": "https://example.com/", "interval_s": 30})
    assert again.status_code == 409
    assert first["id"] in again.json()["detail"]
    other = await create(api, url="https://example.org/")
    clash = await api.patch(f"/monitors/{other['id']}", json={"url": "https://example.com/"})
    assert clash.status_code == 409
    assert first["id"] in clash.json()["detail"]


async def test_maintenance_windows_are_stored_and_counted_in_uptime(
    api: httpx.AsyncClient, resources: Resources
) -> None:
    monitor = await create(api, url="https://example.com/")
    now = datetime.now(UTC)
    one_off = await api.post(
        "/maintenance",
        json={
            "monitors": [monitor["id"]],
            "starts_at": (now - timedelta(minutes=30)).isoformat(),
            "ends_at": (now - timedelta(minutes=20)).isoformat(),
        },
    )
    assert one_off.status_code == 201, one_off.text
    everyone = await api.post(
        "/maintenance", json={"monitors": "all", "cron": "0 * * * *", "duration_s": 60}
    )
    assert everyone.status_code == 201, everyone.text
    assert everyone.json()["monitors"] == "all"
    listed = (await api.get("/maintenance")).json()
    assert {window["id"] for window in listed} == {one_off.json()["id"], everyone.json()["id"]}

    hour = (await api.get(f"/monitors/{monitor['id']}/uptime", params={"window": "1h"})).json()
    # Ten one-off minutes, plus the hourly minute that fell inside the last hour (if its start
    # was more than a minute ago, all of it; otherwise the part so far).
    assert 600 <= hour["maintenance_s"] <= 660
    assert (await api.delete(f"/maintenance/{one_off.json()['id']}")).status_code == 204
    assert (await api.delete(f"/maintenance/{one_off.json()['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"monitors": "all", "starts_at": "2026-12-02T02:00:00Z"}, "needs starts_at and ends_at"),
        (
            {
                "monitors": "all",
                "starts_at": "2026-12-02T02:00:00Z",
                "ends_at": "2026-12-02T01:00:00Z",
            },
            "ends_at must be after starts_at",
        ),
        ({"monitors": "all", "cron": "61 * * * *", "duration_s": 60}, "not a valid"),
        ({"monitors": "all", "cron": "* * * * *", "duration_s": 60}, "once an hour"),
        ({"monitors": "all", "cron": "0 3 * * *"}, "needs duration_s"),
        ({"monitors": [], "cron": "0 3 * * *", "duration_s": 60}, "1 to 1000"),
        ({"monitors": "some", "cron": "0 3 * * *", "duration_s": 60}, "all"),
    ],
)
async def test_bad_maintenance_windows_are_refused(
    api: httpx.AsyncClient, body: dict[str, object], detail: str
) -> None:
    response = await api.post("/maintenance", json=body)
    assert response.status_code == 422
    assert detail in str(response.json()["detail"])


async def test_a_window_for_an_unknown_monitor_is_refused(api: httpx.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    response = await api.post(
        "/maintenance", json={"monitors": [missing], "cron": "0 3 * * *", "duration_s": 600}
    )
    assert response.status_code == 422
    assert missing in response.json()["detail"]
    assert (await api.get("/maintenance")).json() == []
