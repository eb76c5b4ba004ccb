"""Alerts end to end, in one process with the in-process bus: a real site goes down and comes
back, the checker and the sink see it, and the delivery loop tells each channel once. Channels
through the API: webhooks, Apprise (admin keys only), tests, badges."""

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from standardwebhooks.webhooks import Webhook

from errands.config import Settings
from errands.core import auth
from errands.monitors import alerts
from tests.fixtures.app import RunningApp, serve_app
from tests.fixtures.targets import ReceivedRequest, TargetServer

LOOPS = ["monitors", "sink", "deliveries"]
SECRET = "whsec_" + base64.b64encode(b"monitor alerts secret").decode()


async def arrived(target: TargetServer, path: str, count: int, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while len(target.requests[path]) < count:
        assert time.monotonic() < deadline, f"{len(target.requests[path])} of {count} at {path}"
        await asyncio.sleep(0.05)


async def state_of(client: httpx.AsyncClient, monitor_id: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        monitor: dict[str, Any] = (await client.get(f"/monitors/{monitor_id}")).json()
        if monitor["state"] == wanted:
            return monitor
        assert time.monotonic() < deadline, f"still {monitor['state']}, not {wanted}"
        await asyncio.sleep(0.05)


async def check_now(client: httpx.AsyncClient, monitor_id: str, n: int) -> None:
    """Any change makes a monitor due at once; the interval is the harmless one to change."""
    response = await client.patch(f"/monitors/{monitor_id}", json={"interval_s": 3600 + n})
    assert response.status_code == 200, response.text


async def wait_for_checks(client: httpx.AsyncClient, monitor_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while len((await client.get(f"/monitors/{monitor_id}/checks")).json()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} checks stored"
        await asyncio.sleep(0.05)


def payload(request: ReceivedRequest) -> dict[str, Any]:
    body: dict[str, Any] = Webhook(SECRET).verify(request.body, dict(request.headers))
    return body


async def test_a_site_that_goes_down_and_back_sends_one_alert_each_way(
    settings: Settings, target_server: TargetServer
) -> None:
    site = target_server.route("/site", body=b"all good")
    hook = target_server.route("/hook")
    signed = settings.model_copy(update={"webhook_secret": SECRET})
    async with serve_app(signed, loops=LOOPS) as running:
        client = running.client
        channel = (await client.post("/channels", json={"name": "ops", "url": hook})).json()
        created = await client.post(
            "/monitors",
            json={
                "url": site,
                "interval_s": 3600,
                "failure_threshold": 2,
                "channels": [channel["id"]],
            },
        )
        assert created.status_code == 201, created.text
        monitor_id = created.json()["id"]
        await state_of(client, monitor_id, "up")  # new -> up tells no one

        target_server.route("/site", status=503)
        await check_now(client, monitor_id, 1)
        await wait_for_checks(client, monitor_id, 2)
        assert (await client.get(f"/monitors/{monitor_id}")).json()["state"] == "up"
        await check_now(client, monitor_id, 2)
        await state_of(client, monitor_id, "down")
        await arrived(target_server, "/hook", 1)

        target_server.route("/site", body=b"all good")
        await check_now(client, monitor_id, 3)
        await state_of(client, monitor_id, "up")
        await arrived(target_server, "/hook", 2)
        await asyncio.sleep(0.5)  # long enough for a repeat to show up, were one sent
        incidents = (await client.get(f"/monitors/{monitor_id}/incidents")).json()

    down, up = (payload(request) for request in target_server.requests["/hook"])
    assert len(target_server.requests["/hook"]) == 2
    assert (down["type"], up["type"]) == ("monitor.down", "monitor.up")
    assert down["monitor"]["id"] == monitor_id
    assert down["monitor"]["name"] == "127.0.0.1"
    assert down["check"]["status_code"] == 503
    assert down["incident"]["resolved_at"] is None
    assert "503" in down["incident"]["cause"]
    assert up["incident"]["id"] == down["incident"]["id"]
    assert up["incident"]["duration_s"] > 0
    [incident] = incidents
    assert incident["id"] == down["incident"]["id"]
    assert incident["failed_checks"] == 2
    assert incident["resolved_at"] is not None
    ids = {request.headers["webhook-id"] for request in target_server.requests["/hook"]}
    assert len(ids) == 2


async def test_a_regex_that_must_not_match_takes_the_monitor_down(
    settings: Settings, target_server: TargetServer
) -> None:
    site = target_server.route("/status", body=b"<p>Database error</p>")
    hook = target_server.route("/hook")
    async with serve_app(settings, loops=LOOPS) as running:
        client = running.client
        channel = (await client.post("/channels", json={"name": "ops", "url": hook})).json()
        created = await client.post(
            "/monitors",
            json={
                "url": site,
                "interval_s": 3600,
                "regex": "(?i)error",
                "regex_mode": "must_not_match",
                "failure_threshold": 1,
                "channels": [channel["id"]],
            },
        )
        monitor_id = created.json()["id"]
        await state_of(client, monitor_id, "down")
        await arrived(target_server, "/hook", 1)
        [check] = (await client.get(f"/monitors/{monitor_id}/checks")).json()
    assert check["regex_matched"] is True
    assert check["up"] is False
    assert json.loads(target_server.requests["/hook"][0].body)["type"] == "monitor.down"


async def new_key(database_url: str, *scopes: str) -> str:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        _, secret = await auth.create_key(conn, "test", scopes)
    return secret


async def test_apprise_channels_need_an_admin_key_and_deliver_through_apprise(
    settings: Settings, target_server: TargetServer
) -> None:
    receiver = f"json://127.0.0.1:{target_server.port}/apprise"
    body = {"name": "chat", "apprise": receiver}
    async with serve_app(settings) as open_app:
        refused = await open_app.client.post("/channels", json=body)
    assert refused.status_code == 403
    assert "ERRANDS_API_KEYS_ENABLED" in refused.json()["detail"]

    keyed = settings.model_copy(update={"api_keys_enabled": True, "api_key_cache_s": 0.0})
    admin = {"Authorization": f"Bearer {await new_key(str(settings.database_url), 'admin')}"}
    monitors_only = {
        "Authorization": f"Bearer {await new_key(str(settings.database_url), 'monitors')}"
    }
    async with serve_app(keyed, loops=["deliveries"]) as running:
        client = running.client
        refused = await client.post("/channels", json=body, headers=monitors_only)
        assert refused.status_code == 403
        assert "admin" in refused.json()["detail"]
        bad = await client.post(
            "/channels", json={"name": "x", "apprise": "nosuchscheme://x"}, headers=admin
        )
        assert bad.status_code == 422
        created = await client.post("/channels", json=body, headers=admin)
        assert created.status_code == 201, created.text
        channel = created.json()
        assert channel["kind"] == "apprise"
        # A webhook channel needs only the monitors scope.
        webhook = await client.post(
            "/channels",
            json={"name": "hook", "url": target_server.url("/hook")},
            headers=monitors_only,
        )
        assert webhook.status_code == 201
        sent = await client.post(f"/channels/{channel['id']}/test", headers=monitors_only)
        assert sent.status_code == 202
        await arrived(target_server, "/apprise", 1)
        listed = (await client.get("/channels", headers=monitors_only)).json()
    message = json.loads(target_server.requests["/apprise"][0].body)
    assert "test message" in message["message"]
    assert message["title"] == "Errands"
    assert {item["name"] for item in listed} == {"chat", "hook"}


async def test_a_webhook_channel_is_tested_listed_and_deleted(
    app: RunningApp, target_server: TargetServer, settings: Settings
) -> None:
    client = app.client
    hook = target_server.route("/hook")
    for bad in (
        {"name": "x"},
        {"name": "x", "url": "ftp://example.com/"},
        {"url": hook},
        {"name": "x", "url": hook, "apprise": "json://x"},
    ):
        assert (await client.post("/channels", json=bad)).status_code == 422, bad
    secret_url = hook.replace("http://", "http://user:hunter2@")
    channel = (await client.post("/channels", json={"name": "ops", "url": secret_url})).json()
    assert "hunter2" not in json.dumps(channel)
    assert channel["url"].startswith("http://***@127.0.0.1")
    monitor = await client.post(
        "/monitors",
        json={"url": "https://example.com/", "interval_s": 60, "channels": [channel["id"]]},
    )
    assert monitor.json()["channels"] == [channel["id"]]
    unknown = await client.post(
        "/monitors",
        json={"url": "https://example.org/", "interval_s": 60, "channels": [str(uuid.uuid4())]},
    )
    assert unknown.status_code == 422
    assert "no channel" in unknown.json()["detail"]
    assert (await client.get("/monitors")).json()[1:] == []  # nothing half-written

    sent = await client.post(f"/channels/{channel['id']}/test")
    assert sent.status_code == 202
    assert (await client.post(f"/channels/{uuid.uuid4()}/test")).status_code == 404
    assert (await client.delete(f"/channels/{channel['id']}")).status_code == 204
    assert (await client.delete(f"/channels/{channel['id']}")).status_code == 404
    after = (await client.get(f"/monitors/{monitor.json()['id']}")).json()
    assert after["channels"] == []


def test_each_alert_has_one_delivery_id_per_channel() -> None:
    alert = alerts.alert_id(uuid.uuid4(), "monitor.down")
    first, second = uuid.uuid4(), uuid.uuid4()
    assert alerts.delivery_id(alert, first) == alerts.delivery_id(alert, first)
    assert alerts.delivery_id(alert, first) != alerts.delivery_id(alert, second)


@pytest.mark.parametrize("state", ["up", "down"])
def test_an_apprise_message_says_what_happened(state: str) -> None:
    # Named as the store names it: monitor_display_name(), tested in tests/monitors/test_api.py.
    monitor = {
        "id": uuid.uuid4(),
        "name": "example.com",
        "url": "https://u:p@example.com/",
        "state": state,
    }
    text = alerts.notification_text(f"monitor.{state}", monitor, None)  # type: ignore[arg-type]
    assert f"example.com is {state}" in text or "up again" in text
    assert "u:p" not in text
