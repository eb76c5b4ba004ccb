"""API keys: off by default, then required on every route but the operational ones, with scopes,
hashed storage, revocation, and the `errands keys` commands."""

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import APIRouter, FastAPI
from psycopg.rows import dict_row

from errands.config import Settings
from errands.core import auth
from tests.fixtures.app import RunningApp, raw_request, serve_app

OPEN_PATHS = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[RunningApp]:
    """The API with keys on, and no lookup cache so revocations show at once."""
    update = {"api_keys_enabled": True, "api_key_cache_s": 0.0}
    async with serve_app(settings.model_copy(update=update)) as running:
        yield running


async def new_key(database_url: str, *scopes: str, name: str = "test") -> tuple[auth.ApiKey, str]:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        return await auth.create_key(conn, name, scopes)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def every_operation(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, concrete path, scope tag) of every operation in the OpenAPI schema."""
    found = []
    for template, methods in schema["paths"].items():
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
        for method, operation in methods.items():
            tags = [tag for tag in operation.get("tags", []) if tag in auth.FEATURE_SCOPES]
            found.append((method.upper(), path, tags[0] if tags else "admin"))
    return found


async def test_keys_are_off_by_default_for_the_quickstart(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/timer/{uuid.uuid4()}")

    assert response.status_code == 404, "reached the route without any key"


async def test_every_api_route_refuses_a_request_without_a_key(guarded: RunningApp) -> None:
    schema = (await guarded.client.get("/openapi.json")).json()
    # The console's pages check its session cookie instead (tests/console); badges of public
    # monitors need no key (tests/monitors).
    operations = [
        op
        for op in every_operation(schema)
        if not auth.is_open_path(op[1]) and not auth.KEY_OPTIONAL_PATH.match(op[1])
    ]
    assert operations, "the schema lists the feature routes"

    for method, path, _ in operations:
        response = await guarded.client.request(method, path, json={})

        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith('Bearer realm="errands"')
        assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "POST"])
async def test_no_spelling_of_a_path_gets_past_the_key_check(
    guarded: RunningApp, method: str
) -> None:
    spellings = [
        "/stats/",
        "//stats",
        "/%73tats",
        "/STATS",
        "/./stats",
        "/healthz/../stats",
        "/healthz/%2e%2e/stats",
        "/metrics/../stats",
        "/healthz;/stats",
        "/stats%00",
        "http://elsewhere/stats",
    ]
    for target in spellings:
        status, _ = await raw_request(guarded.base_url, method, target)

        assert status == 401, (method, target)


async def test_health_readiness_metrics_and_docs_stay_open(guarded: RunningApp) -> None:
    for path in OPEN_PATHS:
        response = await guarded.client.get(path)

        assert response.status_code == 200, path


async def test_a_key_opens_the_routes_of_its_scopes_only(
    guarded: RunningApp, database_url: str
) -> None:
    schema = (await guarded.client.get("/openapi.json")).json()
    # The console's pages check its session cookie instead (tests/console); badges of public
    # monitors need no key (tests/monitors).
    operations = [
        op
        for op in every_operation(schema)
        if not auth.is_open_path(op[1]) and not auth.KEY_OPTIONAL_PATH.match(op[1])
    ]
    _, admin = await new_key(database_url, "admin")
    for scope in {tag for _, _, tag in operations}:
        _, secret = await new_key(database_url, scope)
        others = [s for s in auth.SCOPES if s not in (scope, "admin")]
        _, other_secret = await new_key(database_url, *others)
        for method, path, tag in operations:
            if tag != scope:
                continue
            allowed = await guarded.client.request(method, path, headers=bearer(secret))
            by_admin = await guarded.client.request(method, path, headers=bearer(admin))
            refused = await guarded.client.request(method, path, headers=bearer(other_secret))

            assert allowed.status_code not in (401, 403), (method, path, allowed.text)
            assert by_admin.status_code not in (401, 403), (method, path, by_admin.text)
            assert refused.status_code == 403, (method, path, refused.text)
            assert f"lacks the '{scope}' scope" in refused.json()["detail"]


async def test_wrong_unknown_and_malformed_keys_get_401(guarded: RunningApp) -> None:
    path = f"/timer/{uuid.uuid4()}"
    for headers in (
        bearer("errands_" + "x" * 43),
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "errands_abc"},
    ):
        response = await guarded.client.get(path, headers=headers)

        assert response.status_code == 401, headers
        assert response.json()["detail"] in (
            "invalid API key",
            "missing API key: send the header 'Authorization: Bearer <key>'",
        )


async def test_the_key_is_checked_before_the_body_is_read(guarded: RunningApp) -> None:
    response = await guarded.client.post(
        "/timer", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 401


async def test_a_path_no_route_serves_needs_a_key_then_is_not_found(
    guarded: RunningApp, database_url: str
) -> None:
    _, secret = await new_key(database_url, "titles")

    assert (await guarded.client.get("/nowhere")).status_code == 401
    assert (await guarded.client.get("/nowhere", headers=bearer(secret))).status_code == 404


def test_a_route_needs_the_scope_of_the_route_its_method_reaches() -> None:
    app = FastAPI()
    for method, tag in (("GET", "titles"), ("POST", "timers")):
        router = APIRouter(tags=[tag])
        router.add_api_route("/things", lambda: None, methods=[method])
        app.include_router(router)
    middleware = auth.ApiKeyMiddleware(app, cache_s=0)

    def needed(method: str, path: str = "/things") -> str | None:
        request = {"type": "http", "method": method, "path": path, "root_path": "", "app": app}
        return middleware._scope_of(request)

    assert needed("GET") == "titles"
    assert needed("POST") == "timers"
    assert needed("DELETE") == "titles"  # the first route of the path answers 405
    assert needed("GET", "/nowhere") is None


async def test_only_the_hash_of_a_key_is_stored(database_url: str) -> None:
    key, secret = await new_key(database_url, "timers", "stats")

    assert secret.startswith("errands_") and len(secret) >= 40
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT key_hash, api_keys::text FROM api_keys")
        stored_hash, whole_row = await cursor.fetchone() or (None, None)
    assert stored_hash == hashlib.sha256(secret.encode()).digest()
    assert secret not in whole_row and secret[len(key.prefix) :] not in whole_row
    assert key.scopes == ["stats", "timers"]


async def run_cli(
    database_url: str, *args: str, pgtz: str = "UTC"
) -> subprocess.CompletedProcess[str]:
    # PGTZ: the session time zone PostgreSQL reports times in.
    env = {**os.environ, "ERRANDS_DATABASE_URL": database_url, "PGTZ": pgtz}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "errands", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_keys_created_listed_and_revoked_from_the_command_line(
    guarded: RunningApp, database_url: str
) -> None:
    created = await run_cli(database_url, "create", "--name", "billing", "--scopes", "timers")
    assert created.returncode == 0, created.stderr
    secret = re.search(r"^key:\s+(errands_\S+)$", created.stdout, re.MULTILINE)
    key_id = re.search(r"^id:\s+(\S+)$", created.stdout, re.MULTILINE)
    assert secret and key_id, created.stdout
    path = f"/timer/{uuid.uuid4()}"
    assert (await guarded.client.get(path, headers=bearer(secret[1]))).status_code == 404

    revoked = await run_cli(database_url, "revoke", key_id[1])
    listed = await run_cli(database_url, "list")

    assert revoked.returncode == 0, revoked.stderr
    response = await guarded.client.get(path, headers=bearer(secret[1]))
    assert response.status_code == 401
    assert "was revoked" in response.json()["detail"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"{key_id[1]}\s+errands_\S+\s+revoked\s+timers\s+billing", listed.stdout)
    assert secret[1] not in listed.stdout, "the key itself is shown only at creation"


async def test_the_revocation_time_is_printed_in_utc_whatever_the_session_zone(
    database_url: str,
) -> None:
    key, _ = await new_key(database_url, "timers")

    revoked = await run_cli(database_url, "revoke", str(key.id), pgtz="Asia/Tokyo")

    assert revoked.returncode == 0, revoked.stderr
    printed = re.search(r" at (\S+ \S+) UTC$", revoked.stdout.strip())
    assert printed, revoked.stdout
    at = datetime.strptime(printed[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=5)


async def test_the_command_line_refuses_bad_scopes_and_ids(database_url: str) -> None:
    bad_scope = await run_cli(database_url, "create", "--name", "x", "--scopes", "timers,root")
    bad_id = await run_cli(database_url, "revoke", "not-a-uuid")
    unknown_id = await run_cli(database_url, "revoke", str(uuid.uuid4()))

    assert bad_scope.returncode == 2 and "choose from titles, stats" in bad_scope.stderr
    assert bad_id.returncode == 2 and "not a key id" in bad_id.stderr
    assert unknown_id.returncode == 1 and "no API key has the id" in unknown_id.stderr


async def test_a_revoked_key_stops_working_within_the_cache_time(
    settings: Settings, database_url: str
) -> None:
    update = {"api_keys_enabled": True, "api_key_cache_s": 1.0}
    async with serve_app(settings.model_copy(update=update)) as running:
        key, secret = await new_key(database_url, "timers")
        path = f"/timer/{uuid.uuid4()}"
        assert (await running.client.get(path, headers=bearer(secret))).status_code == 404
        async with await psycopg.AsyncConnection.connect(
            database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            await auth.revoke_key(conn, key.id)

        deadline = asyncio.get_running_loop().time() + 5
        while (await running.client.get(path, headers=bearer(secret))).status_code != 401:
            assert asyncio.get_running_loop().time() < deadline, "revocation never took effect"
            await asyncio.sleep(0.1)


async def run_migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERRANDS_DATABASE_URL": database_url, "ERRANDS_API_KEYS_ENABLED": "true"}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "errands", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_migrate_with_keys_on_prints_a_bootstrap_admin_key_once(
    guarded: RunningApp, database_url: str
) -> None:
    first = await run_migrate(database_url)
    again = await run_migrate(database_url)

    assert first.returncode == 0, first.stderr
    printed = re.search(
        r"^bootstrap API key \S+ \(admin scope.*\): (errands_\S+)$", first.stdout, re.M
    )
    assert printed, first.stdout
    response = await guarded.client.get("/stats", headers=bearer(printed[1]))
    assert response.status_code == 200
    assert again.returncode == 0, again.stderr
    assert "bootstrap" not in again.stdout
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT name, scopes, key_hash FROM api_keys")
        rows = await cursor.fetchall()
    assert rows == [("bootstrap", ["admin"], hashlib.sha256(printed[1].encode()).digest())]


async def test_no_bootstrap_key_where_a_key_was_ever_made(database_url: str) -> None:
    key, _ = await new_key(database_url, "timers")
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        await auth.revoke_key(conn, key.id)

        made = await auth.create_bootstrap_key(conn)

        assert made is None
        assert [found.name for found in await auth.list_keys(conn)] == ["test"]
