"""The delivery core against real receivers on 127.0.0.1: retries, Retry-After, final answers,
per-host limits, signatures, the attempt log, the outbox, and the store the console reads."""

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from errands.config import Settings
from errands.core import delivery, paging
from errands.core.delivery import store
from errands.core.delivery.sending import HostSlots, retry_delay_s
from errands.core.resources import Resources, open_resources
from tests.fixtures.targets import TargetServer

FAST = {"delivery_retry_base_s": 0.05, "delivery_retry_max_s": 0.1, "delivery_max_attempts": 3}


@contextlib.asynccontextmanager
async def deliveries_running(settings: Settings, **overrides: Any) -> AsyncIterator[Resources]:
    """Resources for `settings` with `overrides`, and the deliveries loop running on them."""
    stop = asyncio.Event()
    async with open_resources(settings.model_copy(update=overrides)) as resources:
        loop = asyncio.create_task(delivery.deliver_webhooks(resources, stop))
        try:
            yield resources
        finally:
            stop.set()
            await asyncio.wait_for(loop, 30)


async def enqueue(resources: Resources, url: str, body: bytes = b"{}", **options: Any) -> uuid.UUID:
    async with resources.pool.connection() as conn, conn.transaction():
        return await delivery.enqueue(conn, url=url, body=body, source="test", **options)


async def settled(
    resources: Resources, delivery_id: uuid.UUID, timeout_s: float = 20
) -> dict[str, Any]:
    """The delivery once it is delivered, failed or cancelled, with its attempt log."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await delivery.get_delivery(resources.pool, delivery_id)
        assert found is not None
        if found["status"] != "pending":
            return found
        assert time.monotonic() < deadline, f"still pending: {found}"
        await asyncio.sleep(0.05)


async def wait_for_hits(server: TargetServer, path: str, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while server.hits[path] < count:
        assert time.monotonic() < deadline, f"{path} had {server.hits[path]} of {count} requests"
        await asyncio.sleep(0.02)


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)]:
        delays = [retry_delay_s(attempts, 1.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1, "jittered, not all the same"


async def test_429_waits_for_retry_after_then_delivers(
    settings: Settings, target_server: TargetServer
) -> None:
    url = target_server.route("/busy", status=429, headers={"Retry-After": "1"})
    async with deliveries_running(settings, **FAST) as resources:
        delivery_id = await enqueue(resources, url)
        await wait_for_hits(target_server, "/busy", 1)
        target_server.route("/busy", status=200)
        done = await settled(resources, delivery_id)

    assert done["status"] == "delivered"
    retried, refused = done["attempt_log"]
    assert [retried["status_code"], refused["status_code"]] == [200, 429]
    waited_s = (retried["attempted_at"] - refused["attempted_at"]).total_seconds()
    assert waited_s >= 1.0, "Retry-After: 1 was honoured over the 0.05 s backoff"


async def test_503_retry_after_as_a_date_is_honoured_and_capped(
    settings: Settings, target_server: TargetServer
) -> None:
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    url = target_server.route("/down", status=503, headers={"Retry-After": in_an_hour})
    async with deliveries_running(settings, **FAST, delivery_retry_after_max_s=0.3) as resources:
        done = await settled(resources, await enqueue(resources, url))

    assert done["status"] == "failed"
    assert done["attempts"] == 3, "retried after the 0.3 s cap, not after an hour"
    assert done["last_error"].startswith("gave up after 3 attempts; last: receiver answered 503")


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (410, {}, "receiver answered 410"),
        (404, {}, "receiver answered 404"),
        (302, {"Location": "http://127.0.0.1:1/elsewhere"}, "redirect"),
    ],
)
async def test_410_other_4xx_and_redirects_are_final(
    settings: Settings,
    target_server: TargetServer,
    status: int,
    headers: dict[str, str],
    error: str,
) -> None:
    url = target_server.route("/final", status=status, headers=headers)
    async with deliveries_running(settings, **FAST) as resources:
        done = await settled(resources, await enqueue(resources, url))

    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert error in done["last_error"]
    assert target_server.hits["/final"] == 1


async def test_a_slow_host_delays_no_other_and_its_queue_does_not_time_out(
    settings: Settings, target_server: TargetServer
) -> None:
    slow = target_server.route("/slow", delay_s=1.0)
    # Another host name for the same server: the limit is per destination host.
    fast = target_server.route("/fast").replace("127.0.0.1", "localhost")
    # 16 places: the slow host may hold 8 (4 sending, 4 waiting); the rest of its deliveries are
    # put back for a moment, so the fast host always finds a place.
    async with deliveries_running(
        settings,
        delivery_max_per_host=4,
        delivery_max_in_flight=16,
        delivery_timeout_s=1.5,
        **FAST,
    ) as resources:
        slow_ids = [await enqueue(resources, slow) for _ in range(24)]
        await wait_for_hits(target_server, "/slow", 4)
        fast_ids = [await enqueue(resources, fast) for _ in range(10)]
        fast_done = [await settled(resources, delivery_id) for delivery_id in fast_ids]
        slow_hits_when_fast_done = target_server.hits["/slow"]
        slow_done = [await settled(resources, delivery_id, 60) for delivery_id in slow_ids]

    assert {done["status"] for done in fast_done} == {"delivered"}
    assert slow_hits_when_fast_done < 24, "the fast host did not wait for the slow host's queue"
    # 24 requests of 1 s, 4 at a time, take 6 s, yet none timed out at 1.5 s: waiting for a
    # slot is not part of a request's timeout.
    assert [(done["status"], done["attempts"]) for done in slow_done] == [("delivered", 1)] * 24


async def test_host_slots_admit_the_limit_and_no_more() -> None:
    slots = HostSlots(limit=2, max_held=4)
    running = 0
    most = 0
    release = asyncio.Event()

    async def send() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    tasks = [asyncio.create_task(slots.hold("a.example", send)) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert most == 2
    assert slots.crowded("a.example") and not slots.crowded("b.example")
    release.set()
    await asyncio.gather(*tasks)
    assert not slots.crowded("a.example")


async def test_every_attempt_keeps_its_webhook_id_and_verifies_with_each_secret(
    settings: Settings, target_server: TargetServer
) -> None:
    secrets = ["whsec_" + base64.b64encode(key).decode() for key in (b"old key", b"new key")]
    url = target_server.route("/flaky", status=500)
    async with deliveries_running(settings, **FAST, webhook_secret=" ".join(secrets)) as resources:
        delivery_id = await enqueue(resources, url, b'{"order": 2041}', headers={"X-Shop": "7"})
        await wait_for_hits(target_server, "/flaky", 1)
        target_server.route("/flaky", status=200)
        await settled(resources, delivery_id)

    requests = target_server.requests["/flaky"]
    assert len(requests) == 2
    for request in requests:
        assert request.headers["webhook-id"] == str(delivery_id)
        assert request.headers["Idempotency-Key"] == str(delivery_id)
        assert request.headers["X-Shop"] == "7"
        for secret in secrets:
            verified = Webhook(secret).verify(request.body, dict(request.headers))
            assert verified == {"order": 2041}


async def test_the_attempt_log_keeps_the_last_20(
    settings: Settings, target_server: TargetServer
) -> None:
    url = target_server.route("/broken", status=500)
    retries = {"delivery_retry_base_s": 0.01, "delivery_retry_max_s": 0.02}
    async with deliveries_running(settings, **retries, delivery_max_attempts=23) as resources:
        done = await settled(resources, await enqueue(resources, url), 60)

    assert done["attempts"] == 23
    assert [entry["attempt"] for entry in done["attempt_log"]] == list(range(23, 3, -1))
    assert all(entry["status_code"] == 500 for entry in done["attempt_log"])
    assert all(entry["latency_ms"] > 0 for entry in done["attempt_log"])


async def test_a_delivery_exists_only_if_the_callers_transaction_commits(
    settings: Settings, target_server: TargetServer
) -> None:
    url = target_server.route("/outbox")
    async with deliveries_running(settings) as resources:
        with contextlib.suppress(RuntimeError):
            async with resources.pool.connection() as conn, conn.transaction():
                await delivery.enqueue(conn, url=url, body=b"rolled back", source="test")
                raise RuntimeError("the state change failed")
        kept = await enqueue(resources, url, b"committed")
        await settled(resources, kept)
        counts = await delivery.count_by_status(resources.pool)

    assert [request.body for request in target_server.requests["/outbox"]] == [b"committed"]
    assert counts == {"pending": 0, "delivered": 1, "failed": 0, "cancelled": 0}


async def test_an_unknown_transport_fails_with_its_name(settings: Settings) -> None:
    async with deliveries_running(settings) as resources:
        delivery_id = await enqueue(resources, "https://example.com/", transport="pigeon")
        done = await settled(resources, delivery_id)
    assert done["status"] == "failed"
    assert "pigeon" in done["last_error"]


async def test_deliveries_list_newest_first_in_keyset_pages(resources: Resources) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    ids = [await enqueue(resources, "https://example.com/", due_at=later) for _ in range(7)]
    async with resources.pool.connection() as conn:
        await store.cancel(conn, ids[0])

    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page, cursor = await delivery.list_deliveries(
            resources.pool, status="pending", limit=2, cursor=cursor
        )
        seen += [row["id"] for row in page]
        if cursor is None:
            break
    assert seen == list(reversed(ids[1:]))
    [cancelled], _ = await delivery.list_deliveries(resources.pool, status="cancelled")
    assert cancelled["id"] == ids[0]
    with pytest.raises(paging.BadCursor):
        await delivery.list_deliveries(resources.pool, cursor="not-a-cursor")


async def test_a_delivery_claimed_ahead_waits_in_memory_and_is_never_early(
    settings: Settings, target_server: TargetServer
) -> None:
    url = target_server.route("/on-time")
    async with deliveries_running(settings, delivery_lookahead_s=3.0) as resources:
        due_at = datetime.now(UTC) + timedelta(seconds=2.0)
        delivery_id = await enqueue(resources, url, due_at=due_at)
        held_before_due = None
        while held_before_due != {"held": True} and datetime.now(UTC) < due_at:
            async with resources.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT lease_until > now() AS held FROM deliveries WHERE id = %s",
                    (delivery_id,),
                )
                held_before_due = await cursor.fetchone()
            await asyncio.sleep(0.02)
        assert not target_server.requests["/on-time"], "sent before it was due"
        done = await settled(resources, delivery_id)

    assert held_before_due == {"held": True}, "claimed within the lookahead"
    [attempt] = done["attempt_log"]
    assert attempt["attempted_at"] >= due_at
