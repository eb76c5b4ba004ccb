"""Badges: SVG images of public monitors, cacheable, and 404 for a private one without a key."""

import uuid
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import httpx
import psycopg
from psycopg.rows import dict_row

from errands.config import Settings
from errands.core import auth
from errands.core.resources import Resources
from errands.monitors.badges import badge_svg
from errands.monitors.results import CheckResult, encode_check
from errands.monitors.sink import store_batch
from tests.fixtures.app import serve_app

BADGES = ["status.svg", "uptime.svg", "uptime.svg?window=7d", "response.svg"]


def test_a_badge_is_well_formed_svg_with_its_words_escaped() -> None:
    svg = badge_svg("status", '<up> & "fine"', "#2e9e44")
    root = ElementTree.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [element.text for element in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == ["status", '<up> & "fine"']
    assert "<up>" not in svg


def a_check(monitor_id: uuid.UUID, minutes_ago: int, up: bool) -> bytes:
    return encode_check(
        CheckResult(
            check_id=uuid.uuid4(),
            monitor_id=monitor_id,
            checked_at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
            url="https://example.com/",
            status_code=200 if up else 500,
            response_time_ms=120.0,
            dns_ms=None,
            connect_ms=None,
            tls_ms=None,
            first_byte_ms=None,
            regex_matched=None,
            error_kind=None,
            error=None,
        )
    )


async def test_public_badges_show_status_uptime_and_response_time(
    api: httpx.AsyncClient, resources: Resources
) -> None:
    created = await api.post(
        "/monitors", json={"url": "https://example.com/", "interval_s": 60, "public": True}
    )
    monitor_id = created.json()["id"]
    checks = [a_check(uuid.UUID(monitor_id), n, up=n != 3) for n in range(1, 9)]
    await store_batch(resources, checks)

    status = await api.get(f"/monitors/{monitor_id}/badge/status.svg")
    assert status.status_code == 200
    assert status.headers["content-type"] == "image/svg+xml"
    assert status.headers["cache-control"] == "public, max-age=60"
    assert status.headers["x-content-type-options"] == "nosniff"
    assert ">up<" in status.text
    uptime = await api.get(f"/monitors/{monitor_id}/badge/uptime.svg", params={"window": "24h"})
    assert ">87.50%<" in uptime.text
    response = await api.get(f"/monitors/{monitor_id}/badge/response.svg")
    assert ">120 ms<" in response.text
    bad = await api.get(f"/monitors/{monitor_id}/badge/uptime.svg", params={"window": "1y"})
    assert bad.status_code == 422


async def test_a_private_monitors_badges_need_a_key(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys_enabled": True, "api_key_cache_s": 0.0})
    async with await psycopg.AsyncConnection.connect(
        str(settings.database_url), autocommit=True, row_factory=dict_row
    ) as conn:
        _, secret = await auth.create_key(conn, "badges", ["monitors"])
    key = {"Authorization": f"Bearer {secret}"}
    async with serve_app(keyed) as running:
        client = running.client
        private = await client.post(
            "/monitors", json={"url": "https://example.com/", "interval_s": 60}, headers=key
        )
        public = await client.post(
            "/monitors",
            json={"url": "https://example.org/", "interval_s": 60, "public": True},
            headers=key,
        )
        for badge in BADGES:
            hidden = await client.get(f"/monitors/{private.json()['id']}/badge/{badge}")
            shown = await client.get(f"/monitors/{public.json()['id']}/badge/{badge}")
            with_key = await client.get(
                f"/monitors/{private.json()['id']}/badge/{badge}", headers=key
            )
            assert hidden.status_code == 404, badge
            assert shown.status_code == 200, badge
            assert with_key.status_code == 200, badge
            assert with_key.headers["cache-control"].startswith("private")
        nobody = await client.get(f"/monitors/{uuid.uuid4()}/badge/status.svg")
        assert nobody.status_code == 404
        # Only badges are open without a key.
        assert (await client.get(f"/monitors/{public.json()['id']}")).status_code == 401
