"""Health, readiness, request ids and the OpenAPI docs of the running app."""

import asyncio

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
