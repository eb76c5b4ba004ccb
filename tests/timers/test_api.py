"""The timer API as a client sees it: the Sendcloud contract, validation and cancelling."""

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from errands.config import Settings
from errands.core.db import Pool
from tests.fixtures.app import serve_app

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
        (b"1e400", "inf"),
        (b'{"hours": 1e400, "url": "https://example.com"}', "inf"),
        (b'{"url": Infinity}', "inf"),
        # JSON may escape half a surrogate pair, which no database text column can hold.
        (b'{"url": "https://example.com/\\ud800"}', "body.url must not contain unpaired"),
        (b'{"\\ud800": 1}', "a key in body must not contain unpaired"),
    ],
)
async def test_json_python_cannot_echo_or_store_is_a_422_not_a_500(
    api: httpx.AsyncClient, pool: Pool, body: bytes, complaint: str
) -> None:
    response = await api.post("/timer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert complaint in response.text
    assert await timer_rows(pool) == 0
