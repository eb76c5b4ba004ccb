"""The firer in-process against a real receiver: on time, signed, retried, refused."""

import asyncio
import hashlib
import hmac
import json
import socket
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg.conninfo import make_conninfo

from errands.config import Settings
from errands.core.db import Pool
from errands.timers.firing import judge_response, retry_delay_s, sign
from tests.fixtures.app import serve_app
from tests.timers.conftest import Receiver, wait_for_status

FAST_RETRIES = {"timer_retry_base_s": 0.1, "timer_max_attempts": 3}


def test_signature_is_hmac_sha256_of_time_dot_body() -> None:
    expected = hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("s3cret", b"{}", 1700000000) == f"t=1700000000,v1={expected}"


def test_retries_back_off_exponentially_up_to_a_ceiling() -> None:
    assert [retry_delay_s(n, 1.0, 60.0) for n in (1, 2, 3, 4, 7, 500)] == [1, 2, 4, 8, 60, 60]


@pytest.mark.parametrize(
    ("status", "result"),
    [(200, "fired"), (204, "fired"), (500, "retry"), (503, "retry"), (400, "failed"),
     (404, "failed"), (410, "failed"), (304, "failed")],
)  # fmt: skip
def test_2xx_delivers_5xx_retries_other_answers_are_final(status: int, result: str) -> None:
    assert judge_response(status).result == result


async def test_timers_fire_on_time_with_the_timer_id(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    async with serve_app(settings, loops=["timers"]) as running:
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
            assert "Errands-Signature" not in delivery.headers
        for timer_id in created:
            await wait_for_status(pool, timer_id, {"fired"})
            timer = (await running.client.get(f"/timer/{timer_id}")).json()
            assert timer["status"] == "fired"
            assert timer["time_left"] == 0
            assert timer["attempts"] == 1
            assert timer["fired_at"] is not None
    assert receiver.counts() == dict.fromkeys(created, 1)


async def test_webhooks_are_signed_when_a_secret_is_set(
    settings: Settings, receiver: Receiver
) -> None:
    signed = settings.model_copy(update={"timer_webhook_secret": "s3cret"})
    async with serve_app(signed, loops=["timers"]) as running:
        await running.client.post("/timer", json={"url": receiver.url})
        await receiver.wait_for_ids(1, timeout_s=10)

    delivery = receiver.deliveries[0]
    fields = dict(part.split("=", 1) for part in delivery.headers["Errands-Signature"].split(","))
    signed_text = fields["t"].encode() + b"." + delivery.body
    assert fields["v1"] == hmac.new(b"s3cret", signed_text, hashlib.sha256).hexdigest()
    assert abs(int(fields["t"]) - delivery.received_at) < 5


async def create_and_settle(
    settings: Settings, pool: Pool, url: str, statuses: set[str]
) -> dict[str, Any]:
    async with serve_app(settings, loops=["timers"]) as running:
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
        update={**FAST_RETRIES, "timer_max_attempts": 2, "timer_webhook_timeout_s": 0.2}
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
    impatient = settings.model_copy(update={"database_url": impatient_url, "timer_lease_s": 3.0})
    holding: list[asyncio.Task[None]] = []

    async def hold_the_row(timer_id: str, locked: asyncio.Event) -> None:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM timers WHERE id = %s FOR UPDATE", (timer_id,))
            locked.set()
            await asyncio.sleep(0.5)

    async def lock_the_first_delivery(timer_id: str) -> None:
        if not holding:
            locked = asyncio.Event()
            holding.append(asyncio.create_task(hold_the_row(timer_id, locked)))
            await locked.wait()

    receiver.on_delivery = lock_the_first_delivery
    async with serve_app(impatient, loops=["timers"]) as running:
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
    slow_polling = settings.model_copy(update={"timer_poll_interval_s": 30.0})
    async with serve_app(slow_polling, loops=["timers"]) as running:
        await running.client.post("/timer", json={"seconds": 1, "url": receiver.url})  # settle
        await receiver.wait_for_ids(1, timeout_s=40)
        asked_at = time.time()
        await running.client.post("/timer", json={"seconds": 0, "url": receiver.url})
        await receiver.wait_for_ids(2, timeout_s=5)

    assert receiver.deliveries[1].received_at - asked_at < 1.0


async def test_firing_is_visible_in_the_metrics(
    settings: Settings, receiver: Receiver, pool: Pool
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO timers (url, fire_at, due_at)"
            " SELECT 'https://example.com', now() + interval '1 hour', now() + interval '1 hour'"
            " FROM generate_series(1, 3)"
        )
    fired_before = REGISTRY.get_sample_value("errands_timers_fired_total", {"outcome": "fired"})
    observed_before = REGISTRY.get_sample_value("errands_timer_lateness_seconds_count")

    async with serve_app(settings, loops=["timers"]) as running:
        deadline = time.monotonic() + 10
        # Counted as the firer starts, then every few seconds.
        while "errands_timers_pending 3.0" not in (await running.client.get("/metrics")).text:
            assert time.monotonic() < deadline, "errands_timers_pending never showed 3"
            await asyncio.sleep(0.05)
        await running.client.post("/timer", json={"url": receiver.url})
        await receiver.wait_for_ids(1, timeout_s=10)

    fired = REGISTRY.get_sample_value("errands_timers_fired_total", {"outcome": "fired"})
    assert (fired or 0) - (fired_before or 0) == 1
    observed = REGISTRY.get_sample_value("errands_timer_lateness_seconds_count")
    assert (observed or 0) - (observed_before or 0) == 1
