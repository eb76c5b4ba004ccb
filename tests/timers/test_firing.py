"""Timers' webhooks through the delivery loop, in process, against a real receiver: on time,
signed, retried, refused."""

import asyncio
import base64
import json
import socket
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg.conninfo import make_conninfo
from standardwebhooks.webhooks import Webhook

from errands.config import Settings
from errands.core.db import Pool
from tests.fixtures.app import serve_app
from tests.timers.conftest import Receiver, wait_for_status

FAST_RETRIES = {"delivery_retry_base_s": 0.1, "delivery_max_attempts": 3}
LOOPS = ["deliveries"]


async def test_timers_fire_on_time_with_the_timer_id(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    async with serve_app(settings, loops=LOOPS) as running:
        created: dict[str, tuple[float, float]] = {}  # id: earliest and latest fair arrival
        for seconds in (0, 1, 2, 2):
            asked_at = time.time()
            response = await running.client.post(
                "/timer", json={"seconds": seconds, "url": receiver.url}
            )
            created[response.json()["id"]] = (asked_at + seconds, time.time() + seconds + 1.0)

        await receiver.wait_for_ids(len(created), timeout_s=10)

        for delivery in receiver.deliveries:
            earliest, latest = created[delivery.timer_id]
            assert earliest <= delivery.received_at < latest
            assert json.loads(delivery.body) == {"id": delivery.timer_id}
            assert delivery.headers["Idempotency-Key"] == delivery.timer_id
            assert delivery.headers["Content-Type"] == "application/json"
            assert delivery.headers["webhook-id"] == delivery.timer_id
            assert "webhook-signature" not in delivery.headers
        for timer_id in created:
            await wait_for_status(pool, timer_id, {"fired"})
            timer = (await running.client.get(f"/timer/{timer_id}")).json()
            assert timer["status"] == "fired"
            assert timer["time_left"] == 0
            assert timer["attempts"] == 1
            assert timer["fired_at"] is not None
    assert receiver.counts() == dict.fromkeys(created, 1)


async def test_webhooks_are_signed_with_every_secret_and_verify_as_standard_webhooks(
    settings: Settings, receiver: Receiver
) -> None:
    old_secret = "whsec_" + base64.b64encode(b"the secret being retired").decode()
    new_secret = "whsec_" + base64.b64encode(b"the secret taking over").decode()
    signed = settings.model_copy(update={"webhook_secret": f"{old_secret} {new_secret}"})
    async with serve_app(signed, loops=LOOPS) as running:
        await running.client.post("/timer", json={"url": receiver.url})
        await receiver.wait_for_ids(1, timeout_s=10)

    delivery = receiver.deliveries[0]
    headers = dict(delivery.headers)
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    # A receiver that knows either secret verifies the webhook, as it would mid-rotation.
    for secret in (old_secret, new_secret):
        payload = Webhook(secret).verify(delivery.body, headers)
        assert payload == {"id": delivery.timer_id}
    assert abs(int(delivery.headers["webhook-timestamp"]) - delivery.received_at) < 5
    stranger = "whsec_" + base64.b64encode(b"someone else").decode()
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(stranger).verify(delivery.body, headers)


async def create_and_settle(
    settings: Settings, pool: Pool, url: str, statuses: set[str]
) -> dict[str, Any]:
    async with serve_app(settings, loops=LOOPS) as running:
        created = (await running.client.post("/timer", json={"url": url})).json()
        row = await wait_for_status(pool, created["id"], statuses)
        timer: dict[str, Any] = (await running.client.get(f"/timer/{created['id']}")).json()
    assert timer["status"] == row["status"]
    return timer


async def test_5xx_is_retried_with_backoff_until_delivered(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    receiver.answers = [503, 500]

    timer = await create_and_settle(
        settings.model_copy(update=FAST_RETRIES), pool, receiver.url, {"fired", "failed"}
    )

    assert timer["status"] == "fired"
    assert timer["attempts"] == 3
    assert receiver.counts() == {timer["id"]: 3}
    first, _, last = (delivery.received_at for delivery in receiver.deliveries)
    assert last - first >= 0.1 + 0.2  # two backoffs: base, then twice the base


async def test_4xx_is_final(settings: Settings, receiver: Receiver, pool: Pool) -> None:
    receiver.answers = [422]

    timer = await create_and_settle(
        settings.model_copy(update=FAST_RETRIES), pool, receiver.url, {"fired", "failed"}
    )

    assert timer["status"] == "failed"
    assert timer["attempts"] == 1
    assert timer["last_error"] == "receiver answered 422"
    assert len(receiver.deliveries) == 1


async def test_connection_errors_are_retried_then_the_timer_fails(
    settings: Settings, pool: Pool
) -> None:
    # A port held but not listening refuses connections, and no other process can take it.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed_port.getsockname()[1]}/hook"
        timer = await create_and_settle(
            settings.model_copy(update=FAST_RETRIES), pool, url, {"fired", "failed"}
        )

    assert timer["status"] == "failed"
    assert timer["attempts"] == 3
    assert timer["last_error"].startswith("gave up after 3 attempts; last: could not connect")


async def test_slow_receivers_time_out_and_are_retried(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    receiver.delay_s = 1.0
    impatient = settings.model_copy(
        update={**FAST_RETRIES, "delivery_max_attempts": 2, "delivery_timeout_s": 0.2}
    )

    timer = await create_and_settle(impatient, pool, receiver.url, {"fired", "failed"})

    assert timer["status"] == "failed"
    assert "timed out" in timer["last_error"]
    assert len(receiver.deliveries) == 2


async def test_a_delivered_webhook_is_recorded_through_a_database_hiccup(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    # The firer's statements give up after 100 ms waiting for a lock, as on a lost connection.
    assert settings.database_url is not None
    impatient_url = make_conninfo(settings.database_url, options="-c lock_timeout=100")
    impatient = settings.model_copy(update={"database_url": impatient_url, "delivery_lease_s": 3.0})
    holding: list[asyncio.Task[None]] = []

    async def hold_the_row(timer_id: str, locked: asyncio.Event) -> None:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM deliveries WHERE id = %s FOR UPDATE", (timer_id,))
            locked.set()
            await asyncio.sleep(0.5)

    async def lock_the_first_delivery(timer_id: str) -> None:
        if not holding:
            locked = asyncio.Event()
            holding.append(asyncio.create_task(hold_the_row(timer_id, locked)))
            await locked.wait()

    receiver.on_delivery = lock_the_first_delivery
    async with serve_app(impatient, loops=LOOPS) as running:
        created = (await running.client.post("/timer", json={"url": receiver.url})).json()
        await wait_for_status(pool, created["id"], {"fired"})
    await asyncio.gather(*holding)

    assert receiver.counts() == {created["id"]: 1}, "recorded, so not sent a second time"


async def test_private_targets_fail_with_a_clear_error_unless_allowed(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    guarded = settings.model_copy(update={"allow_private_targets": False})
    # A host name passes the API's literal check; its address is judged when it is resolved.
    url = receiver.url.replace("127.0.0.1", "localhost")

    timer = await create_and_settle(guarded, pool, url, {"fired", "failed"})

    assert timer["status"] == "failed"
    assert timer["attempts"] == 1
    assert "refused localhost" in timer["last_error"]
    assert receiver.deliveries == []


async def test_a_timer_due_before_the_next_poll_wakes_the_firer(
    settings: Settings, receiver: Receiver
) -> None:
    slow_polling = settings.model_copy(update={"delivery_poll_interval_s": 30.0})
    async with serve_app(slow_polling, loops=LOOPS) as running:
        await running.client.post("/timer", json={"seconds": 1, "url": receiver.url})  # settle
        await receiver.wait_for_ids(1, timeout_s=40)
        asked_at = time.time()
        await running.client.post("/timer", json={"seconds": 0, "url": receiver.url})
        await receiver.wait_for_ids(2, timeout_s=5)

    assert receiver.deliveries[1].received_at - asked_at < 1.0


async def test_firing_is_visible_in_the_metrics(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    async with serve_app(settings) as running:
        for _ in range(3):
            await running.client.post("/timer", json={"hours": 1, "url": "https://example.com"})
    delivered = {"source": "timer", "outcome": "delivered"}
    fired_before = REGISTRY.get_sample_value("errands_deliveries_total", delivered)
    lateness = {"source": "timer"}
    observed_before = REGISTRY.get_sample_value("errands_delivery_lateness_seconds_count", lateness)

    async with serve_app(settings, loops=["timers", "deliveries"]) as running:
        deadline = time.monotonic() + 10
        # Counted as the loop starts, then every few seconds.
        while "errands_timers_pending 3.0" not in (await running.client.get("/metrics")).text:
            assert time.monotonic() < deadline, "errands_timers_pending never showed 3"
            await asyncio.sleep(0.05)
        await running.client.post("/timer", json={"url": receiver.url})
        await receiver.wait_for_ids(1, timeout_s=10)

    fired = REGISTRY.get_sample_value("errands_deliveries_total", delivered)
    assert (fired or 0) - (fired_before or 0) == 1
    observed = REGISTRY.get_sample_value("errands_delivery_lateness_seconds_count", lateness)
    assert (observed or 0) - (observed_before or 0) == 1
