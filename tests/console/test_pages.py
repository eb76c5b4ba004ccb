"""The console's pages over HTTP, and the typed objects each page is given."""

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI, Request

from errands.config import Settings
from errands.console import pages
from errands.console.session import Viewer
from errands.console.templating import CONTENT_SECURITY_POLICY, static_files
from errands.core.resources import Resources
from errands.monitors import store as monitors_store
from errands.monitors.results import CheckResult, encode_check
from errands.monitors.sink import store_batch
from errands.stats.recorder import StatsRecorder
from tests.console.conftest import form_token
from tests.conversions.samples import pdf
from tests.fixtures.app import serve_app
from tests.fixtures.targets import TargetServer


def check(monitor_id: uuid.UUID, at: datetime, *, up: bool) -> CheckResult:
    return CheckResult(
        check_id=uuid.uuid4(),
        monitor_id=monitor_id,
        checked_at=at,
        url="http://example.test/",
        status_code=200 if up else 500,
        response_time_ms=25.0,
        dns_ms=None,
        connect_ms=None,
        tls_ms=None,
        first_byte_ms=None,
        regex_matched=None,
        error_kind=None,
        error=None,
    )


async def add_monitor(resources: Resources, url: str) -> uuid.UUID:
    fields = monitors_store.MonitorFields(
        url=url, interval_s=60, timeout_s=5, method="GET", regex=None, failure_threshold=1
    )
    row = await monitors_store.create_monitor(resources.pool, fields)
    assert isinstance(row, dict)
    monitor_id: uuid.UUID = row["id"]
    return monitor_id


async def test_the_monitors_page_is_given_typed_rows_with_state_figures_and_a_heartbeat(
    resources: Resources,
) -> None:
    now = datetime.now(UTC)
    up_id = await add_monitor(resources, "https://up.example/")
    down_id = await add_monitor(resources, "https://down.example/")
    await store_batch(
        resources,
        [
            encode_check(check(up_id, now - timedelta(minutes=1), up=True)),
            encode_check(check(down_id, now - timedelta(minutes=2), up=True)),
            encode_check(check(down_id, now - timedelta(minutes=1), up=False)),
        ],
    )

    page = await pages.build_monitors_page(resources, search="", state=None, page=1)

    assert isinstance(page, pages.MonitorsPage)
    assert page.title == "Monitors (1 down)"
    assert (page.total, page.pages, page.page) == (2, 1, 1)
    down, up = page.rows
    assert isinstance(down, pages.MonitorRow)
    assert (down.url, down.state, down.uptime_24h_pct) == ("https://down.example/", "down", 50.0)
    assert (up.url, up.state, up.uptime_30d_pct) == ("https://up.example/", "up", 100.0)
    assert "1 up, 1 down" in down.heartbeat
    only_down = await pages.build_monitors_page(resources, search="", state="down", page=1)
    assert [row.id for row in only_down.rows] == [down_id]
    assert only_down.link(2) == "/console/monitors?state=down&page=2"
    assert (down.name, up.name) == ("down.example", "up.example"), "named after the host"


async def test_the_overview_is_given_each_areas_counts(resources: Resources) -> None:
    await add_monitor(resources, "https://new.example/")
    viewer = Viewer(key_name=None, scopes=None)

    page = await pages.build_overview(_request(resources), resources, viewer)

    assert page.monitor_states == {"up": 0, "degraded": 0, "down": 0, "new": 1, "paused": 0}
    assert (page.timers_pending, page.files_waiting) == (0, 0)
    assert page.busiest_routes == []
    assert page.deliveries == {"pending": 0, "delivered": 0, "failed": 0, "cancelled": 0}
    assert page.failed_deliveries == []
    narrow = Viewer(key_name="ci", scopes=frozenset({"timers"}))
    limited = await pages.build_overview(_request(resources), resources, narrow)
    assert (limited.monitor_states, limited.files_waiting, limited.busiest_routes) == (
        None,
        None,
        None,
    )
    assert limited.timers_pending == 0
    assert (limited.deliveries, limited.failed_deliveries) == (None, None)


def _request(resources: Resources) -> Request:
    """A request as the overview's stats part reads it: the app's stats recorder."""
    app = FastAPI()
    app.state.stats_recorder = StatsRecorder()
    app.state.resources = resources
    return Request({"type": "http", "app": app, "headers": [], "method": "GET"})


async def test_every_page_answers_with_a_strict_policy_and_is_not_cached(
    api: httpx.AsyncClient,
) -> None:
    for path in [
        "/",
        "/console/monitors",
        "/console/monitors/new",
        "/console/timers",
        "/console/uploads",
        "/console/stats",
        "/console/sign-in",
    ]:
        response = await api.get(path)

        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in response.text and " style=" not in response.text, path
        assert re.search(r"<h1>[^<]+</h1>", response.text), f"{path} has a main heading"


async def test_static_files_are_cached_by_content_hash_and_nothing_else_is_served(
    api: httpx.AsyncClient,
) -> None:
    page = (await api.get("/console/monitors")).text
    css = static_files()["console.css"]
    assert f"/console/static/console.css?v={css.digest}" in page

    hashed = await api.get(f"/console/static/console.css?v={css.digest}")
    assert hashed.status_code == 200
    assert hashed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert hashed.content == css.body
    stale = await api.get("/console/static/console.css?v=000000000000")
    assert stale.headers["cache-control"] == "no-cache"
    again = await api.get(
        "/console/static/console.css", headers={"If-None-Match": stale.headers["etag"]}
    )
    assert again.status_code == 304
    for path in [
        "/console/static/..%2F..%2Fapp.py",
        "/console/static/pages.py",
        "/console/static/%2e%2e%2fconsole.css",
    ]:
        refused = await api.get(path)
        assert refused.status_code == 404, path
        assert "detail" in refused.json()


async def test_a_monitor_is_created_changed_and_deleted_through_the_forms(
    api: httpx.AsyncClient,
) -> None:
    token = await form_token(api, "/console/monitors/new")

    created = await api.post(
        "/console/monitors",
        data={
            "csrf_token": token,
            "url": "https://shop.example/",
            "interval_s": "30",
            "timeout_s": "",
            "method": "GET",
            "regex": "",
        },
    )
    assert created.status_code == 303
    location = created.headers["location"]
    monitor_id = location.rsplit("/", 1)[1]
    assert (await api.get(f"/monitors/{monitor_id}")).json()["interval_s"] == 30
    detail = await api.get(location)
    assert detail.status_code == 200
    assert "https://shop.example/" in detail.text and "No checks yet." in detail.text

    changed = await api.post(
        location,
        data={
            "csrf_token": token,
            "url": "https://shop.example/cart",
            "interval_s": "90",
            "timeout_s": "",
            "method": "GET",
            "regex": "Basket",
        },
    )
    assert changed.status_code == 303
    stored = (await api.get(f"/monitors/{monitor_id}")).json()
    assert (stored["url"], stored["interval_s"], stored["regex"]) == (
        "https://shop.example/cart",
        90,
        "Basket",
    )

    deleted = await api.post(f"{location}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    assert (await api.get(f"/monitors/{monitor_id}")).status_code == 404
    assert (await api.get(location)).status_code == 404


async def test_bad_form_input_shows_the_form_again_saying_what_is_wrong(
    api: httpx.AsyncClient,
) -> None:
    token = await form_token(api, "/console/monitors/new")
    base = {"csrf_token": token, "url": "https://a.example/", "method": "GET", "regex": ""}

    too_often = await api.post("/console/monitors", data={**base, "interval_s": "1"})
    assert too_often.status_code == 422
    assert "interval_s" in too_often.text and "greater than or equal to 5" in too_often.text
    assert 'value="https://a.example/"' in too_often.text, "what was typed is kept"
    bad_regex = await api.post(
        "/console/monitors", data={**base, "interval_s": "60", "regex": "(unclosed"}
    )
    assert bad_regex.status_code == 422 and "invalid regex" in bad_regex.text
    unknown = await api.post("/console/monitors", data={**base, "interval_s": "60", "x": "1"})
    assert unknown.status_code == 422 and "unknown form fields: x" in unknown.text
    first = await api.post("/console/monitors", data={**base, "interval_s": "60"})
    assert first.status_code == 303
    again = await api.post("/console/monitors", data={**base, "interval_s": "60"})
    assert again.status_code == 409 and "already monitored" in again.text
    assert len((await api.get("/monitors")).json()) == 1, "nothing half-written"


async def test_forms_without_a_valid_token_or_from_another_site_are_refused(
    api: httpx.AsyncClient,
) -> None:
    token = await form_token(api, "/console/monitors/new")
    fields = {"url": "https://a.example/", "interval_s": "60", "method": "GET"}

    missing = await api.post("/console/monitors", data=fields)
    forged = await api.post("/console/monitors", data={**fields, "csrf_token": "0" * 64})
    cross_site = await api.post(
        "/console/monitors",
        data={**fields, "csrf_token": token},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    foreign = await api.post(
        "/console/monitors",
        data={**fields, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    async with httpx.AsyncClient(base_url=str(api.base_url)) as stranger:
        other_cookie = await stranger.post(
            "/console/monitors", data={**fields, "csrf_token": token}
        )

    for refused in (missing, forged, cross_site, foreign, other_cookie):
        assert refused.status_code == 403
        assert "<h1>Not allowed</h1>" in refused.text
    assert (await api.get("/monitors")).json() == []


async def test_a_hostile_url_is_shown_escaped(api: httpx.AsyncClient) -> None:
    token = await form_token(api, "/console/monitors/new")
    url = 'https://x.example/?q=<script>alert("x")</script>'
    created = await api.post(
        "/console/monitors",
        data={"csrf_token": token, "url": url, "interval_s": "60", "method": "GET"},
    )
    assert created.status_code == 303

    listing = await api.get("/console/monitors", params={"q": "<script>"})
    assert "<script>alert" not in listing.text
    assert "&lt;script&gt;alert" in listing.text
    assert "1 monitors" in listing.text


async def test_the_rows_fragment_is_the_same_rows_the_page_shows(api: httpx.AsyncClient) -> None:
    token = await form_token(api, "/console/monitors/new")
    await api.post(
        "/console/monitors",
        data={"csrf_token": token, "url": "https://a.example/", "interval_s": "60"},
    )

    full = await api.get("/console/monitors")
    rows = await api.get("/console/monitors", params={"fragment": "rows"})

    assert "<html" not in rows.text and "https://a.example/" in rows.text
    assert rows.text.strip() in full.text
    assert 'data-refresh="/console/monitors?page=1&amp;fragment=rows"' in full.text


async def test_a_timer_is_shown_and_cancelled_from_its_page(api: httpx.AsyncClient) -> None:
    created = await api.post("/timer", json={"hours": 1, "url": "https://hook.example/"})
    timer_id = created.json()["id"]

    opened = await api.get("/console/timers", params={"id": timer_id})
    assert opened.status_code == 303
    page = await api.get(opened.headers["location"])
    assert "pending" in page.text and "Cancel timer" in page.text
    token = await form_token(api, f"/console/timers/{timer_id}")

    cancelled = await api.post(f"/console/timers/{timer_id}/cancel", data={"csrf_token": token})
    assert cancelled.status_code == 303
    assert (await api.get(f"/timer/{timer_id}")).json()["status"] == "cancelled"
    again = await api.post(f"/console/timers/{timer_id}/cancel", data={"csrf_token": token})
    assert again.status_code == 409 and "already cancelled" in again.text
    missing = await api.get(f"/console/timers/{uuid.uuid4()}")
    assert missing.status_code == 404 and "<h1>Not found</h1>" in missing.text


async def test_timers_are_listed_by_status_with_their_attempts_and_a_failed_one_is_retried(
    settings: Settings, target_server: TargetServer
) -> None:
    hook = target_server.route("/hook", status=410)
    async with serve_app(settings, loops=["deliveries"]) as app:
        api = app.client
        failing = (await api.post("/timer", json={"seconds": 0, "url": hook})).json()["id"]
        later = (await api.post("/timer", json={"hours": 3, "url": hook})).json()["id"]
        await until(api, failing, "failed")

        failed_list = await api.get("/console/timers", params={"status": "failed"})
        assert failing in failed_list.text and later not in failed_list.text
        everything = await api.get("/console/timers")
        assert failing in everything.text and later in everything.text
        assert "Timers (1 pending)" in everything.text
        overview = await api.get("/")
        assert f'href="/console/timers/{failing}"' in overview.text, "listed as a failed webhook"
        detail = await api.get(f"/console/timers/{failing}")
        assert "410" in detail.text and "Retry now" in detail.text
        assert "Cancel timer" not in detail.text

        target_server.route("/hook", status=200)
        token = await form_token(api, f"/console/timers/{failing}")
        retried = await api.post(f"/console/timers/{failing}/retry", data={"csrf_token": token})
        assert retried.status_code == 303
        await until(api, failing, "fired")
        again = await api.post(f"/console/timers/{failing}/retry", data={"csrf_token": token})
        assert again.status_code == 409 and "not failed" in again.text
        bad_cursor = await api.get("/console/timers", params={"cursor": "nonsense"})
        assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.text


async def until(api: httpx.AsyncClient, timer_id: str, status: str) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while (await api.get(f"/timer/{timer_id}")).json()["status"] != status:
        assert asyncio.get_running_loop().time() < deadline, f"timer never {status}"
        await asyncio.sleep(0.1)


async def test_a_monitor_is_paused_and_resumed_from_its_page(api: httpx.AsyncClient) -> None:
    created = await api.post("/monitors", json={"url": "https://a.example/", "interval_s": 60})
    monitor_id = created.json()["id"]
    page = f"/console/monitors/{monitor_id}"
    token = await form_token(api, page)
    assert "Pause</button>" in (await api.get(page)).text

    paused = await api.post(f"{page}/pause", data={"csrf_token": token, "paused": "true"})
    assert paused.status_code == 303
    assert (await api.get(f"/monitors/{monitor_id}")).json()["paused"] is True
    shown = await api.get(page)
    assert "Resume</button>" in shown.text and 'class="state paused"' in shown.text
    listed = await api.get("/console/monitors", params={"state": "paused"})
    assert "a.example" in listed.text

    bad = await api.post(f"{page}/pause", data={"csrf_token": token, "paused": "maybe"})
    assert bad.status_code == 422
    await api.post(f"{page}/pause", data={"csrf_token": token, "paused": "false"})
    assert (await api.get(f"/monitors/{monitor_id}")).json()["paused"] is False


async def test_uploads_are_listed_by_status_and_a_bad_cursor_is_a_clear_422(
    api: httpx.AsyncClient,
) -> None:
    document = pdf([(200, 200)])
    created = await api.post("/uploads", files=[("files", ("a.pdf", document, "application/pdf"))])
    upload_id = created.json()["id"]

    listed = await api.get("/console/uploads")
    assert f'href="/console/uploads/{upload_id}"' in listed.text
    assert "Uploads (1 files waiting)" in listed.text
    failed_only = await api.get("/console/uploads", params={"status": "failed"})
    assert upload_id not in failed_only.text and "No uploads failed." in failed_only.text
    bad = await api.get("/console/uploads", params={"cursor": "nonsense"})
    assert bad.status_code == 422 and "cursor" in bad.text


async def test_channels_and_maintenance_windows_are_listed_with_secrets_masked(
    api: httpx.AsyncClient,
) -> None:
    empty = await api.get("/console/alerts")
    assert "No channels" in empty.text and "No maintenance windows." in empty.text
    channel = await api.post(
        "/channels",
        json={"name": "on-call", "url": "https://ops:hunter2@hooks.example/x"},
    )
    assert channel.status_code == 201, channel.text
    window = await api.post(
        "/maintenance",
        json={"monitors": "all", "starts_at": "2030-01-01T00:00:00Z",
              "ends_at": "2030-01-01T01:00:00Z"},
    )  # fmt: skip
    assert window.status_code == 201, window.text

    page = await api.get("/console/alerts")
    assert "on-call" in page.text and "hooks.example" in page.text
    assert "hunter2" not in page.text
    assert "2030-01-01 00:00:00 UTC" in page.text


async def test_channels_and_maintenance_windows_are_added_and_removed_through_the_forms(
    api: httpx.AsyncClient,
) -> None:
    token = await form_token(api, "/console/alerts")

    added = await api.post(
        "/console/alerts/channels",
        data={"csrf_token": token, "name": "on-call", "url": "https://hooks.example/errands"},
    )
    assert added.status_code == 303 and added.headers["location"] == "/console/alerts"
    [channel] = (await api.get("/channels")).json()
    assert (channel["name"], channel["kind"]) == ("on-call", "webhook")

    held = await api.post(
        "/console/alerts/maintenance", data={"csrf_token": token, "minutes": "30"}
    )
    assert held.status_code == 303
    [window] = (await api.get("/maintenance")).json()
    starts = datetime.fromisoformat(window["starts_at"])
    ends = datetime.fromisoformat(window["ends_at"])
    assert window["monitors"] == "all" and ends - starts == timedelta(minutes=30)
    assert abs(datetime.now(UTC) - starts) < timedelta(minutes=1)

    page = await api.get("/console/alerts")
    assert f'action="/console/alerts/channels/{channel["id"]}/delete"' in page.text
    assert f'action="/console/alerts/maintenance/{window["id"]}/delete"' in page.text

    removed = await api.post(
        f"/console/alerts/channels/{channel['id']}/delete", data={"csrf_token": token}
    )
    assert removed.status_code == 303 and (await api.get("/channels")).json() == []
    removed = await api.post(
        f"/console/alerts/maintenance/{window['id']}/delete", data={"csrf_token": token}
    )
    assert removed.status_code == 303 and (await api.get("/maintenance")).json() == []
    gone = await api.post(
        f"/console/alerts/maintenance/{window['id']}/delete", data={"csrf_token": token}
    )
    assert gone.status_code == 404


async def test_bad_channel_and_window_forms_show_the_page_again_saying_what_is_wrong(
    api: httpx.AsyncClient,
) -> None:
    token = await form_token(api, "/console/alerts")
    cases = [
        ("/console/alerts/channels", {"name": "ops", "url": "ftp://hooks.example/"}, "url"),
        ("/console/alerts/channels", {"name": "", "url": "https://hooks.example/"}, "name"),
        ("/console/alerts/channels", {"name": "ops", "apprise": "json://a.example/"}, "url"),
        ("/console/alerts/maintenance", {"minutes": "0"}, "minutes"),
        ("/console/alerts/maintenance", {"minutes": "soon"}, "minutes"),
        ("/console/alerts/maintenance", {"minutes": "9" * 5000}, "minutes"),
    ]
    for path, fields, named in cases:
        refused = await api.post(path, data={"csrf_token": token, **fields})
        assert refused.status_code == 422, (path, fields, refused.text)
        assert 'role="alert"' in refused.text and named in refused.text, (fields, refused.text)
    kept = await api.post(
        "/console/alerts/channels",
        data={"csrf_token": token, "name": "ops", "url": "ftp://hooks.example/"},
    )
    assert 'value="ftp://hooks.example/"' in kept.text, "what was typed stays in the form"
    assert (await api.get("/channels")).json() == [] and (
        await api.get("/maintenance")
    ).json() == []
    forged = await api.post(
        "/console/alerts/channels",
        data={"csrf_token": "0" * 64, "name": "ops", "url": "https://hooks.example/"},
    )
    assert forged.status_code == 403 and (await api.get("/channels")).json() == []


async def test_the_timers_page_lists_the_recurring_schedules(
    settings: Settings, resources: Resources
) -> None:
    async with serve_app(settings) as app:
        api = app.client
        cron = {"cron": "*/5 * * * *", "timezone": "Europe/Amsterdam", "url": "https://a.test/"}
        daily = (await api.post("/schedules", json=cron)).json()["id"]
        every = {"every_s": 60, "url": "https://b.test/"}
        minutely = (await api.post("/schedules", json=every)).json()["id"]
        assert (await api.post(f"/schedules/{minutely}/pause")).status_code == 200

        page = await pages.build_timers_page(resources, None, None)
        assert [str(schedule.id) for schedule in page.schedules] == [minutely, daily]
        assert [schedule.paused for schedule in page.schedules] == [True, False]
        assert page.more_schedules is False

        html = (await api.get("/console/timers")).text
        assert "<code>*/5 * * * *</code> (Europe/Amsterdam)" in html
        assert "every 60 s" in html and "paused" in html
