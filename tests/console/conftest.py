"""The console served for real: keys off (open on 127.0.0.1), or keys on with sign-in."""

import re
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from errands.config import Settings
from errands.core import auth
from tests.fixtures.app import RunningApp, serve_app

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[RunningApp]:
    """The app with API keys on, so the console asks for one."""
    update = {"api_keys_enabled": True, "api_key_cache_s": 0.0}
    async with serve_app(settings.model_copy(update=update)) as running:
        yield running


async def new_key(database_url: str, *scopes: str, name: str = "ops") -> tuple[auth.ApiKey, str]:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        return await auth.create_key(conn, name, scopes)


async def form_token(client: httpx.AsyncClient, page: str) -> str:
    """The CSRF token of the forms on `page`, as a browser would find it there."""
    response = await client.get(page)
    found = TOKEN.search(response.text)
    assert found is not None, f"no form token on {page}: {response.status_code}"
    return found.group(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each test's call report on it, so the browser fixture knows it failed."""
    report = yield
    if call.when == "call":
        item.call_report = report  # type: ignore[attr-defined]
    return report
