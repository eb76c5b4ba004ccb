"""Health, readiness, request ids and the OpenAPI docs of the running app."""

import asyncio
import json

import httpx
import psycopg
import pytest

from errands.config import Settings
from tests.fixtures.app import RunningApp, serve_app


async def test_healthz_and_readyz_answer_when_the_database_does(app: RunningApp) -> None:
    health = await app.client.get("/healthz")
    ready = await app.client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "kafka": None})


async def test_readyz_is_503_when_the_database_is_gone(
    settings: Settings, postgres_server_url: str, database_url: str
) -> None:
    async with serve_app(settings) as running:
        name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        async with await psycopg.AsyncConnection.connect(
            postgres_server_url, autocommit=True
        ) as conn:
            await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        try:
            ready = await running.client.get("/readyz")
            assert ready.status_code == 503
            assert (await running.client.get("/healthz")).status_code == 200
        finally:
            async with await psycopg.AsyncConnection.connect(
                postgres_server_url, autocommit=True
            ) as conn:
                await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


async def test_requests_get_503_while_the_database_is_unreachable_and_200_once_it_is_back(
    settings: Settings, postgres_server_url: str, database_url: str
) -> None:
    timer = "/timer/00000000-0000-0000-0000-000000000000"
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]

    async def allow_connections(allow: bool) -> None:
        async with await psycopg.AsyncConnection.connect(
            postgres_server_url, autocommit=True
        ) as conn:
            await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
            if not allow:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )

    async with serve_app(settings.model_copy(update={"db_pool_timeout_s": 0.5})) as running:
        assert (await running.client.get(timer)).status_code == 404
        await allow_connections(False)
        try:
            lost = await running.client.get(timer)
            assert lost.status_code == 503
            assert lost.json() == {"detail": "the database is unavailable; try again shortly"}
            assert lost.headers["retry-after"] == "5"
        finally:
            await allow_connections(True)
        # The pool reconnects in the background: poll with a deadline.
        for _ in range(75):
            if (await running.client.get(timer)).status_code == 404:
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("requests still fail 15 s after the database came back")


@pytest.mark.parametrize("sent", [None, "client-chosen-id-42"])
async def test_every_response_carries_a_request_id(app: RunningApp, sent: str | None) -> None:
    headers = {"X-Request-ID": sent} if sent else {}
    response = await app.client.get("/healthz", headers=headers)
    request_id = response.headers["x-request-id"]
    assert request_id == sent if sent else len(request_id) == 32


async def test_the_openapi_schema_and_docs_are_served(app: RunningApp) -> None:
    schema = await app.client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/healthz" in schema.json()["paths"]
    assert (await app.client.get("/docs")).status_code == 200


async def test_head_healthz_answers_200_without_a_body(app: RunningApp) -> None:
    response = await app.client.head("/healthz")
    assert (response.status_code, response.content) == (200, b"")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/timer", {"minute": 5, "url": "https://example.com/hook"}),
        ("/titles", {"domains": ["example.com"], "timeout": 3}),
        ("/monitors", {"url": "https://example.com", "interval_s": 60, "intervall": 5}),
    ],
)
async def test_an_unknown_field_is_refused_by_name(
    api: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    response = await api.post(path, json=body)
    unknown = next(name for name in body if name in ("minute", "timeout", "intervall"))
    assert response.status_code == 422
    assert response.json() == {
        "detail": f"{unknown}: unknown field; send only the fields this route documents"
    }


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {"url": "ftp://example.com/hook"},
            "url must be an http:// or https:// URL with a host",
        ),
        (
            {"hours": -1, "seconds": "3", "url": "https://example.com/hook"},
            "hours: Input should be greater than or equal to 0; seconds: Input should be a "
            "valid integer",
        ),
        ([1, 2], "the body must be a JSON object"),
        ({"hours": 1}, "url: Field required"),
    ],
)
async def test_bad_input_gets_one_string_naming_each_problem(
    api: httpx.AsyncClient, body: object, detail: str
) -> None:
    response = await api.post("/timer", json=body)
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


async def test_a_json_body_sent_as_a_form_is_told_the_content_type(
    api: httpx.AsyncClient,
) -> None:
    # What `curl -d '{...}'` sends without -H 'Content-Type: application/json'.
    response = await api.post(
        "/timer",
        content=b'{"seconds": 5, "url": "https://example.com/hook"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": "the body is not read as JSON: send it with Content-Type: application/json"
    }


async def test_malformed_json_says_where(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/timer", content=b'{"seconds": 5,}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the body is not valid JSON (at character 14)")


async def test_a_huge_list_gets_a_small_422_naming_it_without_stalling_health(
    api: httpx.AsyncClient,
) -> None:
    """200,000 integers (400 KB) once gave a 20 MB 422 after seconds of CPU, and four at once
    held /healthz for 12 s: the list is refused before its items are validated."""
    body = json.dumps({"domains": [1] * 200_000}, separators=(",", ":")).encode()
    assert len(body) < 401_000
    headers = {"Content-Type": "application/json"}

    async def post_huge() -> httpx.Response:
        return await api.post("/titles", content=body, headers=headers)

    posts = [asyncio.create_task(post_huge()) for _ in range(4)]
    health = await api.get("/healthz", timeout=5)
    answers = await asyncio.gather(*posts)

    assert health.status_code == 200
    for answer in answers:
        assert answer.status_code == 422
        assert len(answer.content) < 200
        assert answer.json() == {
            "detail": "domains has 200000 items; no list may have more than 10000"
        }


async def test_a_422_reports_at_most_ten_problems(api: httpx.AsyncClient) -> None:
    response = await api.post("/titles", json={"domains": list(range(5_000))})
    detail = response.json()["detail"]
    assert response.status_code == 422
    assert detail.count("Input should be a valid string") == 10
    assert detail.endswith("; and 4990 more problems")
    assert len(response.content) < 1000
