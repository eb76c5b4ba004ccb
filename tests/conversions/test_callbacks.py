"""Completion callbacks: one signed `upload.done` / `upload.failed` webhook per upload, created
with the last file's state change and sent by the delivery core to a real receiver."""

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import psycopg
from standardwebhooks.webhooks import Webhook

from errands.config import Settings
from tests.conversions import samples
from tests.conversions.test_supervisor import wait_until_finished
from tests.fixtures.app import serve_app
from tests.fixtures.targets import ReceivedRequest, TargetServer

LOOPS = ["conversions", "deliveries"]
SECRET = "whsec_" + base64.b64encode(b"the uploads' receiver secret").decode()


async def upload_with_callback(
    api: httpx.AsyncClient, callback_url: str, *files: tuple[str, bytes]
) -> httpx.Response:
    return await api.post(
        "/uploads",
        files=[("files", (name, content)) for name, content in files],
        data={"callback_url": callback_url},
    )


async def callbacks_received(
    target: TargetServer, path: str, count: int, within_s: float = 30
) -> list[ReceivedRequest]:
    deadline = time.monotonic() + within_s
    while len(target.requests[path]) < count:
        assert time.monotonic() < deadline, f"{count} callbacks not received in time"
        await asyncio.sleep(0.05)
    return target.requests[path]


async def test_a_finished_upload_calls_back_once_signed_with_its_status(
    settings: Settings, target_server: TargetServer
) -> None:
    signed = settings.model_copy(update={"webhook_secret": SECRET})
    done_url = target_server.route("/done")
    failed_url = target_server.route("/failed")
    async with serve_app(signed, loops=LOOPS) as app:
        done = await upload_with_callback(
            app.client, done_url, ("a.png", samples.png(20, 20)), ("b.jpg", samples.jpeg(30, 20))
        )
        failed = await upload_with_callback(
            app.client, failed_url, ("a.png", samples.png(20, 20)), ("bomb.png", samples.png_bomb())
        )
        assert done.status_code == failed.status_code == 200
        await wait_until_finished(app.client, done.json()["id"])
        await wait_until_finished(app.client, failed.json()["id"])
        [done_call] = await callbacks_received(target_server, "/done", 1)
        [failed_call] = await callbacks_received(target_server, "/failed", 1)
        status = (await app.client.get(f"/uploads/{failed.json()['id']}/status")).json()
        await asyncio.sleep(1)  # a second webhook, if one were made, would have come by now
    assert len(target_server.requests["/done"]) == len(target_server.requests["/failed"]) == 1

    payloads: list[dict[str, Any]] = []
    for call in (done_call, failed_call):
        assert call.method == "POST"
        assert call.headers["content-type"] == "application/json"
        payloads.append(Webhook(SECRET).verify(call.body, dict(call.headers)))
    assert payloads[0]["type"] == "upload.done"
    assert payloads[0]["data"] == {
        "id": done.json()["id"],
        "status": "done",
        "files_total": 2,
        "files_done": 2,
        "files_failed": 0,
    }
    assert payloads[1]["type"] == "upload.failed"
    assert payloads[1]["data"] == status  # the body GET /uploads/{id}/status answers
    assert status["status"] == "failed" and status["files_failed"] == 1


async def test_the_callback_is_created_in_the_last_file_s_transaction(
    settings: Settings, target_server: TargetServer, database_url: str
) -> None:
    # No delivery loop: the callback waits in the deliveries table, made with the last change.
    url = target_server.route("/hook")
    async with serve_app(settings, loops=["conversions"]) as app:
        response = await upload_with_callback(app.client, url, ("a.png", samples.png(8, 8)))
        upload_id = response.json()["id"]
        await wait_until_finished(app.client, upload_id)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT d.source, d.url, d.body, d.status FROM deliveries d"
            " JOIN uploads u ON u.callback_delivery_id = d.id WHERE u.id = %s",
            [upload_id],
        )
        rows = await cursor.fetchall()
    [(source, called, body, delivery_status)] = rows
    assert (source, called, delivery_status) == ("upload", url, "pending")
    assert json.loads(bytes(body))["type"] == "upload.done"
    assert target_server.requests["/hook"] == []


async def test_a_callback_url_that_cannot_be_called_refuses_the_upload(
    settings: Settings, database_url: str
) -> None:
    guarded = settings.model_copy(update={"allow_private_targets": False})
    async with serve_app(guarded) as app:
        for url, detail in [
            ("ftp://example.com/x", "callback_url must be an http:// or https:// URL with a host"),
            ("http://127.0.0.1:9/hook", "callback_url is not allowed: "),
            ("https://example.com/" + "a" * 2100, "callback_url is longer than 2048 characters"),
            ("http://example.com:99999/", "callback_url is not a valid URL: "),
        ]:
            response = await upload_with_callback(app.client, url, ("a.png", samples.png(8, 8)))
            assert response.status_code == 422, url
            assert response.json()["detail"].startswith(detail), response.json()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM uploads")
        assert await cursor.fetchone() == (0,)
    assert not any((settings.data_dir / "files").rglob("original.*"))
