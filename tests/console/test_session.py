"""Who may use the console: open on 127.0.0.1 with keys off; with keys on, a key once, then a
signed, expiring, HttpOnly, SameSite=Strict session cookie that follows the key's scopes."""

import time
from unittest import mock

import httpx
import psycopg
import pytest
from fastapi import FastAPI, Request
from itsdangerous import URLSafeTimedSerializer
from psycopg.rows import dict_row

from errands.console import session
from errands.console.store import signing_secret
from errands.core import auth
from errands.core.resources import Resources
from tests.console.conftest import form_token, new_key
from tests.fixtures.app import RunningApp


async def sign_in(client: httpx.AsyncClient, secret: str, next_path: str = "/") -> httpx.Response:
    token = await form_token(client, f"/console/sign-in?next={next_path}")
    return await client.post(
        "/console/sign-in", data={"csrf_token": token, "key": secret, "next": next_path}
    )


async def test_with_keys_on_a_page_asks_to_sign_in_and_then_comes_back(
    guarded: RunningApp, database_url: str
) -> None:
    client = guarded.client
    _, secret = await new_key(database_url, "admin")

    asked = await client.get("/console/monitors?state=down")
    assert asked.status_code == 303
    assert asked.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fmonitors%3Fstate%3Ddown"

    signed_in = await sign_in(client, secret, "/console/monitors?state=down")
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/console/monitors?state=down"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{session.SESSION_COOKIE}=")
    for flag in ("HttpOnly", "SameSite=strict", "Max-Age=28800", "Path=/"):
        assert flag in cookie, flag
    assert "Secure" not in cookie, "plain http here; Secure is set under https"
    assert secret not in cookie, "the cookie holds the key's id, never the key"

    page = await client.get("/console/monitors")
    assert page.status_code == 200
    assert "Signed in as ops" in page.text
    assert (await client.get("/monitors")).status_code == 401, "the JSON API still needs a key"


async def test_a_wrong_key_is_refused_and_the_next_address_stays_on_this_site(
    guarded: RunningApp, database_url: str
) -> None:
    client = guarded.client
    wrong = await sign_in(client, "errands_not-a-key")
    assert wrong.status_code == 403
    assert "unknown or was revoked" in wrong.text
    assert session.SESSION_COOKIE not in client.cookies

    _, secret = await new_key(database_url, "admin")
    for away in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = await sign_in(client, secret, away)
        assert response.headers["location"] == "/", away


async def test_pages_follow_the_scopes_of_the_key(guarded: RunningApp, database_url: str) -> None:
    client = guarded.client
    _, secret = await new_key(database_url, "timers", name="on-call")
    await sign_in(client, secret)

    assert (await client.get("/console/timers")).status_code == 200
    refused = await client.get("/console/monitors")
    assert refused.status_code == 403
    assert "lacks the &#39;monitors&#39; scope" in refused.text
    overview = await client.get("/")
    assert 'href="/console/timers"' in overview.text
    assert 'href="/console/monitors"' not in overview.text, "no link to a page it cannot open"


async def test_a_revoked_key_ends_its_sessions_at_once(
    guarded: RunningApp, database_url: str
) -> None:
    client = guarded.client
    key, secret = await new_key(database_url, "admin")
    await sign_in(client, secret)
    assert (await client.get("/")).status_code == 200

    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        await auth.revoke_key(conn, key.id)

    assert (await client.get("/")).status_code == 303
    assert (await sign_in(client, secret)).status_code == 403


async def test_an_expired_or_tampered_cookie_is_not_a_session(
    guarded: RunningApp, database_url: str, resources: Resources
) -> None:
    client = guarded.client
    key, _ = await new_key(database_url, "admin")
    serializer = URLSafeTimedSerializer(
        await signing_secret(resources.pool), salt=session.SESSION_SALT
    )
    nine_hours_ago = time.time() - 9 * 3600
    with mock.patch("itsdangerous.timed.time.time", return_value=nine_hours_ago):
        expired = serializer.dumps({"key": str(key.id)})
    fresh = serializer.dumps({"key": str(key.id)})
    other_secret = URLSafeTimedSerializer(b"x" * 32, salt=session.SESSION_SALT)

    for value in (expired, other_secret.dumps({"key": str(key.id)}), fresh[:-2] + "xx"):
        client.cookies.set(session.SESSION_COOKIE, value)
        assert (await client.get("/")).status_code == 303
    client.cookies.set(session.SESSION_COOKIE, fresh)
    assert (await client.get("/")).status_code == 200


async def test_signing_out_is_a_post_that_ends_the_session(
    guarded: RunningApp, database_url: str
) -> None:
    client = guarded.client
    _, secret = await new_key(database_url, "admin")
    await sign_in(client, secret)
    token = await form_token(client, "/")

    assert (await client.get("/console/sign-out")).status_code == 405
    out = await client.post("/console/sign-out", data={"csrf_token": token})
    assert out.status_code == 303
    assert f'{session.SESSION_COOKIE}=""' in out.headers["set-cookie"]
    assert (await client.get("/")).status_code == 303


async def test_the_sign_in_form_and_static_files_need_no_key(guarded: RunningApp) -> None:
    assert (await guarded.client.get("/console/sign-in")).status_code == 200
    assert (await guarded.client.get("/console/static/console.css")).status_code == 200


@pytest.mark.parametrize(
    ("client_host", "allowed"),
    [("127.0.0.1", True), ("::1", True), ("10.1.2.3", False), (None, False)],
)
async def test_with_keys_off_only_this_machine_may_use_the_console(
    resources: Resources, client_host: str | None, allowed: bool
) -> None:
    scope = {
        "type": "http",
        "app": FastAPI(),
        "headers": [],
        "method": "GET",
        "path": "/",
        "query_string": b"",
        "client": None if client_host is None else (client_host, 50000),
    }
    if allowed:
        viewer = await session.current_viewer(Request(scope), resources)
        assert viewer.allows("admin") and not viewer.signed_in
        return
    with pytest.raises(session.PageError) as refused:
        await session.current_viewer(Request(scope), resources)
    assert refused.value.status_code == 403
    assert "ERRANDS_API_KEYS_ENABLED" in refused.value.detail
