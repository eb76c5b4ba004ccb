"""The timer API as a client sees it: the Sendcloud contract, validation and cancelling."""

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from errands.config import Settings
from errands.core.db import Pool
from errands.timers.api import TimerView
from tests.fixtures.app import serve_app
from tests.fixtures.targets import TargetServer

HOOK = "https://example.com/hook"


async def timer_rows(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) AS n FROM timers")
        row = await cursor.fetchone()
    assert row is not None
    return int(row["n"])


async def test_create_returns_id_and_seconds_left_as_in_the_spec(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    response = await api.post(
        "/timer", json={"hours": 4, "minutes": 0, "seconds": 1, "url": "https://someserver.com"}
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "time_left"}
    assert body["time_left"] == 14401
    # Committed before the id came back: another connection sees it at once.
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT t.url, d.status, extract(epoch FROM t.fire_at - t.created_at) AS delay"
            " FROM timers AS t JOIN deliveries AS d USING (id) WHERE id = %s",
            (body["id"],),
        )
        row = await cursor.fetchone()
    assert row is not None
    assert row["url"] == "https://someserver.com"
    assert row["status"] == "pending"
    assert float(row["delay"]) == pytest.approx(14401, abs=1)


async def test_get_shows_seconds_left_and_the_timer_state(api: httpx.AsyncClient) -> None:
    created = (await api.post("/timer", json={"minutes": 2, "url": HOOK})).json()

    response = await api.get(f"/timer/{created['id']}")

    assert response.status_code == 200
    timer = response.json()
    assert timer["id"] == created["id"]
    assert 118 <= timer["time_left"] <= 120
    assert timer["status"] == "pending"
    assert timer["attempts"] == 0
    assert timer["fired_at"] is None
    assert timer["last_error"] is None
    assert timer["url"] == HOOK


async def test_missing_parts_count_as_zero(api: httpx.AsyncClient) -> None:
    response = await api.post("/timer", json={"seconds": 30, "url": HOOK})
    assert response.json()["time_left"] == 30
    response = await api.post("/timer", json={"url": HOOK})
    assert response.json()["time_left"] == 0


async def test_expired_timer_has_no_time_left(api: httpx.AsyncClient, pool: Pool) -> None:
    created = (await api.post("/timer", json={"seconds": 60, "url": HOOK})).json()
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE timers SET fire_at = now() - interval '1 second' WHERE id = %s",
            (created["id"],),
        )

    assert (await api.get(f"/timer/{created['id']}")).json()["time_left"] == 0


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"hours": 1.5, "url": HOOK}, "integer"),
        ({"minutes": True, "url": HOOK}, "integer"),
        ({"seconds": "10", "url": HOOK}, "integer"),
        ({"seconds": -1, "url": HOOK}, "greater than or equal to 0"),
        ({"seconds": 10}, "url"),
        ({"seconds": 10, "url": "ftp://example.com/x"}, "http"),
        ({"seconds": 10, "url": "not-a-url"}, "http"),
        ({"seconds": 10, "url": "https://"}, "host"),
        ({"seconds": 10, "url": "http://xn--/"}, "not a valid host name"),
        ({"seconds": 10, "url": "https://example.com:99999/"}, "out of range"),
        ({"seconds": 10, "url": "https://example.com/" + "a" * 2048}, "2048"),
        ({"seconds": 10, "url": 42}, "string"),
        ({"url": "https://example.com/\u0000"}, "must not contain NUL"),
        ({"url": "https://example.com/a b"}, "spaces"),
        ({"url": "https://example.com\\@evil.test/"}, "backslashes"),
        ({"hours": 365 * 24, "seconds": 1, "url": HOOK}, "longest allowed is 31536000 seconds"),
        ({"hours": 10**30, "url": HOOK}, "longest allowed"),
    ],
)
async def test_bad_input_is_refused_with_a_clear_422_and_nothing_stored(
    api: httpx.AsyncClient, pool: Pool, body: dict[str, Any], complaint: str
) -> None:
    response = await api.post("/timer", json=body)

    assert response.status_code == 422
    assert complaint in str(response.json()["detail"])
    assert await timer_rows(pool) == 0


async def test_the_longest_allowed_timer_is_accepted(api: httpx.AsyncClient) -> None:
    response = await api.post("/timer", json={"hours": 365 * 24, "url": HOOK})
    assert response.status_code == 200
    assert response.json()["time_left"] == 365 * 24 * 3600


async def test_non_json_body_is_a_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/timer", content=b"hours=1", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


async def test_unknown_or_malformed_id_is_not_a_server_error(api: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    for method in ("GET", "DELETE"):
        response = await api.request(method, f"/timer/{unknown}")
        assert response.status_code == 404
        assert str(unknown) in response.json()["detail"]
        assert (await api.request(method, "/timer/not-a-uuid")).status_code == 422
        assert (await api.request(method, "/timer/" + "9" * 300)).status_code == 422


async def test_a_timer_reads_the_same_however_its_id_is_spelled(api: httpx.AsyncClient) -> None:
    created = (await api.post("/timer", json={"minutes": 2, "url": HOOK})).json()
    await api.delete(f"/timer/{created['id']}")  # time_left stays 0 between the reads
    timer_id, unknown = uuid.UUID(created["id"]), uuid.uuid4()

    # As the API writes ids (served ahead of FastAPI), and as clients may send them.
    for id_of in (str, lambda value: str(value).upper(), lambda value: value.hex):
        found = await api.get(f"/timer/{id_of(timer_id)}")
        missing = await api.get(f"/timer/{id_of(unknown)}")

        assert found.status_code == 200
        assert found.headers["content-type"] == "application/json"
        assert found.json() == {**found.json(), "id": str(timer_id), "status": "cancelled"}
        assert list(found.json()) == list(TimerView.model_fields)
        assert missing.status_code == 404
        assert missing.json() == {"detail": f"no timer with id {unknown}"}
        assert found.content == (await api.get(f"/timer/{timer_id}")).content


async def test_timers_read_at_once_each_get_their_own(api: httpx.AsyncClient) -> None:
    created = [
        (await api.post("/timer", json={"minutes": minutes, "url": f"{HOOK}/{minutes}"})).json()
        for minutes in range(1, 21)
    ]
    ids = [timer["id"] for timer in created] + [str(uuid.uuid4()) for _ in range(20)]

    # Reads that arrive together share one SELECT; each caller still gets its own row.
    answers = await asyncio.gather(*(api.get(f"/timer/{timer_id}") for timer_id in ids))

    for minutes, answer in enumerate(answers[:20], start=1):
        assert answer.status_code == 200
        assert answer.json()["url"] == f"{HOOK}/{minutes}"
    assert [answer.status_code for answer in answers[20:]] == [404] * 20


async def test_private_targets_are_refused_unless_allowed(settings: Settings) -> None:
    guarded = settings.model_copy(update={"allow_private_targets": False})
    async with serve_app(guarded) as running:
        response = await running.client.post(
            "/timer", json={"seconds": 5, "url": "http://10.1.2.3/hook"}
        )
    assert response.status_code == 422
    assert "10.1.2.3" in response.json()["detail"]


async def test_cancel_stops_a_pending_timer_once(api: httpx.AsyncClient, pool: Pool) -> None:
    created = (await api.post("/timer", json={"seconds": 30, "url": HOOK})).json()

    response = await api.delete(f"/timer/{created['id']}")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["time_left"] == 0
    assert (await api.get(f"/timer/{created['id']}")).json()["status"] == "cancelled"
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT due_at FROM deliveries WHERE id = %s", (created["id"],))
        assert await cursor.fetchone() == {"due_at": None}  # never claimed again
    again = await api.delete(f"/timer/{created['id']}")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


async def test_cancel_refuses_a_fired_timer_or_one_being_fired(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    fired = (await api.post("/timer", json={"url": HOOK})).json()
    firing = (await api.post("/timer", json={"url": HOOK})).json()
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE deliveries SET status = 'delivered', due_at = NULL, delivered_at = now()"
            " WHERE id = %s",
            (fired["id"],),
        )
        await conn.execute(
            "UPDATE deliveries SET lease_owner = 'someone',"
            " lease_until = now() + interval '1 minute'"
            " WHERE id = %s",
            (firing["id"],),
        )

    response = await api.delete(f"/timer/{fired['id']}")
    assert response.status_code == 409
    assert "already fired" in response.json()["detail"]
    assert (await api.get(f"/timer/{firing['id']}")).json()["status"] == "firing"
    response = await api.delete(f"/timer/{firing['id']}")
    assert response.status_code == 409
    assert "being fired right now" in response.json()["detail"]


async def test_concurrent_creations_each_get_their_own_committed_timer(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    responses = await asyncio.gather(
        *(api.post("/timer", json={"seconds": n, "url": f"{HOOK}/{n}"}) for n in range(200))
    )

    assert {response.status_code for response in responses} == {200}
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id::text, url, extract(epoch FROM fire_at - created_at)::int AS delay"
            " FROM timers"
        )
        stored = {row["id"]: (row["url"], row["delay"]) for row in await cursor.fetchall()}
    for n, response in enumerate(responses):
        assert response.json()["time_left"] == n
        assert stored[response.json()["id"]] == (f"{HOOK}/{n}", n)
    assert len(stored) == 200


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"1e400", "the body must be a JSON object"),
        (b'{"hours": 1e400, "url": "https://example.com"}', "hours: Input should be a valid"),
        (b'{"url": Infinity}', "url: Input should be a valid string"),
        # JSON may escape half a surrogate pair, which no database text column can hold.
        (b'{"url": "https://example.com/\\ud800"}', "url must not contain unpaired"),
        (b'{"\\ud800": 1}', "a key in the body must not contain unpaired"),
    ],
)
async def test_json_python_cannot_echo_or_store_is_a_422_not_a_500(
    api: httpx.AsyncClient, pool: Pool, body: bytes, complaint: str
) -> None:
    response = await api.post("/timer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert complaint in response.text
    assert await timer_rows(pool) == 0


async def test_an_unknown_field_is_a_422_naming_it_not_a_timer_due_now(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    response = await api.post("/timer", json={"minute": 5, "url": HOOK})

    assert response.status_code == 422
    assert response.json() == {
        "detail": "minute: unknown field; send only the fields this route documents"
    }
    assert await timer_rows(pool) == 0


async def test_the_same_idempotency_key_and_body_return_the_same_timer(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    key = {"Idempotency-Key": "order-2041"}
    first = await api.post("/timer", json={"minutes": 5, "url": HOOK}, headers=key)
    again = await api.post("/timer", json={"url": HOOK, "minutes": 5}, headers=key)
    other = await api.post("/timer", json={"minutes": 6, "url": HOOK}, headers=key)
    unkeyed = await api.post("/timer", json={"minutes": 5, "url": HOOK})

    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert 298 <= again.json()["time_left"] <= 300
    assert other.status_code == 409
    assert "order-2041" in other.json()["detail"]
    assert unkeyed.json()["id"] != first.json()["id"]
    assert await timer_rows(pool) == 2


async def test_concurrent_requests_with_one_key_make_one_timer(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    key = {"Idempotency-Key": "retry-storm"}
    responses = await asyncio.gather(
        *(api.post("/timer", json={"seconds": 30, "url": HOOK}, headers=key) for _ in range(20))
    )

    assert {response.status_code for response in responses} == {200}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await timer_rows(pool) == 1


async def test_an_idempotency_key_is_free_again_after_24_hours(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    key = {"Idempotency-Key": "daily"}
    old = (await api.post("/timer", json={"seconds": 30, "url": HOOK}, headers=key)).json()
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE timers SET created_at = now() - interval '25 hours' WHERE id = %s", (old["id"],)
        )

    new = await api.post("/timer", json={"seconds": 40, "url": HOOK}, headers=key)
    assert new.status_code == 200
    assert new.json()["id"] != old["id"]


async def test_a_timer_sends_its_own_method_headers_and_body(
    settings: Settings, target_server: TargetServer
) -> None:
    hook = target_server.route("/custom")
    async with serve_app(settings, loops=["deliveries"]) as running:
        created = await running.client.post(
            "/timer",
            json={
                "url": hook,
                "method": "PUT",
                "headers": {"Authorization": "Bearer abc", "Content-Type": "application/x+json"},
                "body": {"reminder": "invoice 2041", "items": [1, 2]},
            },
        )
        timer_id = created.json()["id"]
        deadline = time.monotonic() + 15
        while (await running.client.get(f"/timer/{timer_id}")).json()["status"] != "fired":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    [request] = target_server.requests["/custom"]
    assert request.method == "PUT"
    assert request.headers["Authorization"] == "Bearer abc"
    assert request.headers["Content-Type"] == "application/x+json"
    assert json.loads(request.body) == {"reminder": "invoice 2041", "items": [1, 2]}
    assert request.headers["webhook-id"] == timer_id


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ({"headers": {"Host": "evil.example"}}, "may not be set"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "may not be set"),
        ({"headers": {"content-length": "5"}}, "may not be set"),
        ({"headers": {"webhook-signature": "v1,forged"}}, "may not be set"),
        ({"headers": {"Bad Name": "x"}}, "not a valid header name"),
        ({"headers": {"X-Line": "a\r\nInjected: 1"}}, "printable"),
        ({"headers": {f"X-{n}": "v" for n in range(33)}}, "at most 32 headers"),
        ({"method": "TRACE"}, "method"),
        ({"method": "GET", "body": {"a": 1}}, "a GET webhook carries no body"),
        ({"body": "x" * 70_000}, "at most 65536 bytes"),
    ],
)
async def test_webhook_options_out_of_bounds_are_refused(
    api: httpx.AsyncClient, pool: Pool, extra: dict[str, Any], complaint: str
) -> None:
    response = await api.post("/timer", json={"url": HOOK, **extra})

    assert response.status_code == 422
    assert complaint in response.text
    assert await timer_rows(pool) == 0


async def test_timers_list_newest_first_by_status_in_pages(api: httpx.AsyncClient) -> None:
    ids = [
        (await api.post("/timer", json={"hours": 1, "url": HOOK})).json()["id"] for _ in range(5)
    ]
    await api.delete(f"/timer/{ids[0]}")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"status": "pending", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/timers", params=params)).json()
        seen += [timer["id"] for timer in page["timers"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids[1:]))
    cancelled = (await api.get("/timers", params={"status": "cancelled"})).json()
    assert [timer["id"] for timer in cancelled["timers"]] == [ids[0]]
    assert (await api.get("/timers", params={"status": "lost"})).status_code == 422
    assert (await api.get("/timers", params={"cursor": "bogus"})).status_code == 422
    assert (await api.get("/timers", params={"limit": 0})).status_code == 422


async def test_a_failed_timer_shows_its_attempts_and_can_be_retried(
    settings: Settings, target_server: TargetServer
) -> None:
    hook = target_server.route("/gone", status=410)
    async with serve_app(settings, loops=["deliveries"]) as running:
        client = running.client
        timer_id = (await client.post("/timer", json={"url": hook})).json()["id"]
        deadline = time.monotonic() + 15
        while (await client.get(f"/timer/{timer_id}")).json()["status"] != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [attempt] = (await client.get(f"/timer/{timer_id}/attempts")).json()
        assert attempt["status_code"] == 410
        assert attempt["error"] == "receiver answered 410"

        target_server.route("/gone", status=200)
        retried = await client.post(f"/timer/{timer_id}/retry")
        assert retried.status_code == 200
        while (await client.get(f"/timer/{timer_id}")).json()["status"] != "fired":
            assert time.monotonic() < deadline + 15
            await asyncio.sleep(0.05)
        attempts = (await client.get(f"/timer/{timer_id}/attempts")).json()
        assert [entry["status_code"] for entry in attempts] == [200, 410]
        again = await client.post(f"/timer/{timer_id}/retry")
        assert again.status_code == 409
        assert "fired, not failed" in again.json()["detail"]
    missing = uuid.uuid4()
    async with serve_app(settings) as running:
        assert (await running.client.post(f"/timer/{missing}/retry")).status_code == 404
        assert (await running.client.get(f"/timer/{missing}/attempts")).status_code == 404


async def test_patch_reschedules_a_pending_timer_only(api: httpx.AsyncClient, pool: Pool) -> None:
    timer_id = (await api.post("/timer", json={"hours": 1, "url": HOOK})).json()["id"]

    moved = await api.patch(f"/timer/{timer_id}", json={"minutes": 2})
    assert moved.status_code == 200
    assert 118 <= moved.json()["time_left"] <= 120
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT extract(epoch FROM due_at - now()) AS due_in FROM deliveries WHERE id = %s",
            (timer_id,),
        )
        row = await cursor.fetchone()
    assert row is not None and 118 <= float(row["due_in"]) <= 120

    assert (await api.patch(f"/timer/{timer_id}", json={"minute": 2})).status_code == 422
    await api.delete(f"/timer/{timer_id}")
    refused = await api.patch(f"/timer/{timer_id}", json={"minutes": 2})
    assert refused.status_code == 409
    assert "already cancelled" in refused.json()["detail"]
    assert (await api.patch(f"/timer/{uuid.uuid4()}", json={"seconds": 1})).status_code == 404
