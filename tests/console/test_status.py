"""The public status page: public monitors only, by name and state, 90 daily bars each, and
incidents; open without a key; cached, with an ETag."""

import uuid
from datetime import UTC, datetime, timedelta

from errands.config import Settings
from errands.console.status import DAYS, StatusPage, build_status_page
from errands.core.resources import Resources
from errands.monitors import store
from errands.monitors.sink import store_batch
from tests.fixtures.app import RunningApp, serve_app
from tests.monitors.test_summaries import check, encode_check


async def add(resources: Resources, url: str, name: str, *, public: bool) -> uuid.UUID:
    fields = store.MonitorFields(
        url=url, interval_s=60, timeout_s=5, method="GET", regex=None, name=name,
        failure_threshold=1, public=public,
    )  # fmt: skip
    row = await store.create_monitor(resources.pool, fields)
    assert isinstance(row, dict)
    monitor_id: uuid.UUID = row["id"]
    return monitor_id


async def test_the_page_is_given_public_monitors_with_90_days_and_their_incidents(
    resources: Resources,
) -> None:
    now = datetime.now(UTC)
    shop = await add(resources, "https://shop.example/?key=s3cret", "<b>Shop</b>", public=True)
    api = await add(resources, "https://api.example/", "API", public=True)
    hidden = await add(resources, "https://internal.example/", "Internal", public=False)
    await store_batch(
        resources,
        [
            encode_check(check(shop, now - timedelta(days=3), up=False)),
            encode_check(check(shop, now - timedelta(days=3) + timedelta(minutes=1), up=True)),
            encode_check(check(shop, now - timedelta(minutes=1), up=True)),
            encode_check(check(api, now - timedelta(minutes=1), up=False)),
            encode_check(check(hidden, now - timedelta(minutes=1), up=False)),
        ],
    )

    page = await build_status_page(resources)

    assert isinstance(page, StatusPage)
    assert [(m.name, m.state) for m in page.monitors] == [("<b>Shop</b>", "up"), ("API", "down")]
    assert page.headline == "1 of 2 is having trouble"
    assert page.monitors[0].uptime_pct is not None and 60 < page.monitors[0].uptime_pct < 70
    assert page.monitors[0].days.count("M") == DAYS
    assert [(i.monitor_name, i.state) for i in page.open_incidents] == [("API", "down")]
    assert [(i.monitor_name, i.resolved_at is not None) for i in page.recent_incidents] == [
        ("<b>Shop</b>", True)
    ]


async def test_the_page_needs_no_key_shows_no_url_and_is_cached(
    settings: Settings, resources: Resources
) -> None:
    shop = await add(resources, "https://shop.example/?key=s3cret", "<b>Shop</b>", public=True)
    await add(resources, "https://internal.example/", "Internal", public=False)
    now = datetime.now(UTC)
    await store_batch(resources, [encode_check(check(shop, now - timedelta(minutes=1), up=False))])
    keys_on = settings.model_copy(update={"api_keys_enabled": True, "status_cache_s": 60})
    async with serve_app(keys_on) as app:
        await _check_public_and_cached(app)


async def _check_public_and_cached(app: RunningApp) -> None:
    response = await app.client.get("/status")

    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=60"
    assert "set-cookie" not in response.headers, "the same page for everyone"
    assert "&lt;b&gt;Shop&lt;/b&gt;" in response.text and "<b>Shop</b>" not in response.text
    assert "Internal" not in response.text
    assert "shop.example" not in response.text and "s3cret" not in response.text
    assert "Open incidents" in response.text, "the open incident is shown"
    assert "answered with status" not in response.text, "but not its cause"
    assert "Sign out" not in response.text and "/console/monitors" not in response.text
    again = await app.client.get("/status", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert (await app.client.get("/monitors")).status_code == 401, "the rest still needs a key"
