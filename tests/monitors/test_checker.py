"""The checker: what one check records, and the loop that schedules checks across workers."""

import asyncio
import socket
import ssl
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web

from errands.core.bus import MemoryBus
from errands.core.db import Pool
from errands.core.http import GuardedClient
from errands.core.resources import Resources
from errands.monitors.checker import check_site, run_checker
from errands.monitors.results import decode_check
from tests.fixtures.app import serve_app
from tests.fixtures.targets import TargetServer


def monitor(
    url: str,
    *,
    regex: str | None = None,
    method: str = "GET",
    timeout_s: float = 5,
    expected_status: str = "200-399",
    regex_mode: str = "must_match",
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "url": url,
        "method": method,
        "regex": regex,
        "timeout_s": timeout_s,
        "expected_status": expected_status,
        "regex_mode": regex_mode,
    }


async def test_a_regex_is_found_not_found_or_not_asked_for(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/page", body=b"<h1>All systems operational</h1>")
    found = await check_site(
        resources.http, monitor(url, regex=r"systems\s+oper"), regex_timeout_s=1
    )
    missing = await check_site(resources.http, monitor(url, regex="outage"), regex_timeout_s=1)
    none = await check_site(resources.http, monitor(url), regex_timeout_s=1)
    assert (found.regex_matched, missing.regex_matched, none.regex_matched) == (True, False, None)
    assert (found.up, missing.up, none.up) == (True, False, True)
    for result in (found, missing, none):
        assert result.status_code == 200
        assert result.error_kind is None
        assert result.response_time_ms is not None and result.response_time_ms > 0
        assert result.checked_at.tzinfo is not None
        assert result.checked_at.utcoffset() == timedelta(0)


async def test_the_page_is_decoded_with_its_charset(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route(
        "/latin", body="Café ouvert".encode("latin-1"), content_type="text/html; charset=latin-1"
    )
    result = await check_site(resources.http, monitor(url, regex="Café"), regex_timeout_s=1)
    assert result.regex_matched is True


@pytest.mark.parametrize("charset", ["no-such-charset", "idna", "punycode", "undefined"])
async def test_a_charset_that_cannot_decode_the_page_falls_back_to_utf8(
    resources: Resources, target_server: TargetServer, charset: str
) -> None:
    url = target_server.route(
        f"/{charset}",
        body="Café \xff ouvert".encode(),
        content_type=f"text/html; charset={charset}",
    )
    result = await check_site(resources.http, monitor(url, regex="Café"), regex_timeout_s=1)
    assert (result.regex_matched, result.up) == (True, True)


async def test_the_regex_only_sees_the_first_mebibyte(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/big", body=b"a" * (1024 * 1024) + b"NEEDLE")
    result = await check_site(resources.http, monitor(url, regex="NEEDLE"), regex_timeout_s=1)
    assert result.regex_matched is False
    assert result.status_code == 200


async def test_a_runaway_regex_is_stopped_by_its_time_bound(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/evil", body=b"a" * 5000 + b"!")
    result = await check_site(resources.http, monitor(url, regex=r"(a|aa)+$"), regex_timeout_s=0.05)
    assert result.regex_matched is None
    assert result.error_kind == "other"
    assert result.error is not None and "regex" in result.error
    assert result.up is False


async def test_an_error_status_is_down_also_for_head(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/gone", status=503, body=b"<html>gone</html>")
    result = await check_site(resources.http, monitor(url, method="HEAD"), regex_timeout_s=1)
    assert result.status_code == 503
    assert result.up is False
    assert result.error_kind is None
    assert target_server.requests["/gone"][0].method == "HEAD"


async def test_a_target_that_does_not_answer_in_time_is_a_timeout(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/slow", delay_s=5)
    started = asyncio.get_running_loop().time()
    result = await check_site(resources.http, monitor(url, timeout_s=0.3), regex_timeout_s=1)
    assert asyncio.get_running_loop().time() - started < 3
    assert result.error_kind == "timeout"
    assert result.status_code is None
    assert result.response_time_ms is None
    assert result.up is False


async def test_a_closed_port_is_a_connect_error(resources: Resources) -> None:
    from tests.fixtures.app import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    result = await check_site(resources.http, monitor(url), regex_timeout_s=1)
    assert result.error_kind == "connect"
    assert result.error


async def insert_monitors(pool: Pool, urls: list[str], interval_s: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in urls]
    async with pool.connection() as conn:
        for monitor_id, url in zip(ids, urls, strict=True):
            await conn.execute(
                "INSERT INTO monitors (id, url, interval_s, timeout_s, due_at)"
                " VALUES (%s, %s, %s, 2, now())",
                (monitor_id, url, interval_s),
            )
    return ids


async def drain(bus: MemoryBus, expected: int, within_s: float) -> list[Any]:
    stop = asyncio.Event()
    received = []
    batches = bus.consume(stop, max_messages=1000)

    async def collect() -> None:
        async for batch in batches:
            received.extend(decode_check(message.value) for message in batch.messages)
            if len(received) >= expected:
                return

    await asyncio.wait_for(collect(), within_s)
    return received


async def test_several_checkers_check_each_monitor_once_per_slot(
    resources: Resources, target_server: TargetServer, stop_event: asyncio.Event
) -> None:
    urls = [target_server.route(f"/site/{n}", delay_s=0.05) for n in range(40)]
    ids = await insert_monitors(resources.pool, urls, interval_s=3600)
    checkers = [asyncio.create_task(run_checker(resources, stop_event)) for _ in range(3)]

    results = await drain(resources.bus, len(ids), within_s=20)  # type: ignore[arg-type]
    # Give any second check of the same slot the chance to happen before counting.
    await asyncio.sleep(0.5)
    stop_event.set()
    await asyncio.gather(*checkers)

    assert Counter(result.monitor_id for result in results) == Counter(ids)
    assert all(target_server.hits[f"/site/{n}"] == 1 for n in range(40))
    async with resources.pool.connection() as conn:
        cursor = await conn.execute("SELECT due_at - now() AS ahead, lease_owner FROM monitors")
        rows = await cursor.fetchall()
    assert all(timedelta(minutes=59) < row["ahead"] <= timedelta(hours=1) for row in rows)
    assert all(row["lease_owner"] is None for row in rows)


async def test_a_late_monitor_skips_missed_slots(
    resources: Resources, target_server: TargetServer, stop_event: asyncio.Event
) -> None:
    (monitor_id,) = await insert_monitors(resources.pool, [target_server.route("/late")], 60)
    async with resources.pool.connection() as conn:
        await conn.execute(
            "UPDATE monitors SET due_at = now() - interval '150 seconds' WHERE id = %s",
            (monitor_id,),
        )
        cursor = await conn.execute("SELECT due_at FROM monitors WHERE id = %s", (monitor_id,))
        row = await cursor.fetchone()
    assert row is not None
    first_due: datetime = row["due_at"]
    checker = asyncio.create_task(run_checker(resources, stop_event))
    await drain(resources.bus, 1, within_s=10)  # type: ignore[arg-type]
    stop_event.set()
    await checker
    async with resources.pool.connection() as conn:
        cursor = await conn.execute("SELECT due_at FROM monitors WHERE id = %s", (monitor_id,))
        row = await cursor.fetchone()
    assert row is not None
    # Slots stay on the original grid: three intervals on, the first not in the past.
    assert row["due_at"] == first_due + timedelta(seconds=180)
    assert target_server.hits["/late"] == 1


async def wait_for_checks(api: httpx.AsyncClient, monitor_id: str, count: int) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        checks: list[Any] = (await api.get(f"/monitors/{monitor_id}/checks")).json()
        if len(checks) >= count:
            return checks
        assert asyncio.get_running_loop().time() < deadline, f"only {len(checks)} checks"
        await asyncio.sleep(0.1)


async def test_end_to_end_through_the_in_process_bus(
    resources: Resources, target_server: TargetServer
) -> None:
    """Without Kafka, `errands serve` checks, stores and answers uptime in one process."""
    settings = resources.settings
    assert settings.kafka_bootstrap_servers is None
    up_url = target_server.route("/up", body=b"status: green")
    down_url = target_server.route("/down", status=500)
    async with serve_app(settings, loops=["monitors", "sink"]) as running:
        api = running.client
        up = await api.post("/monitors", json={"url": up_url, "interval_s": 5, "regex": "green"})
        down = await api.post("/monitors", json={"url": down_url, "interval_s": 5})
        assert up.status_code == down.status_code == 201
        up_checks = await wait_for_checks(api, up.json()["id"], 1)
        down_checks = await wait_for_checks(api, down.json()["id"], 1)
        assert up_checks[0]["regex_matched"] is True and up_checks[0]["up"] is True
        assert down_checks[0]["status_code"] == 500 and down_checks[0]["up"] is False
        uptime = (await api.get(f"/monitors/{up.json()['id']}/uptime?window=1h")).json()
        assert uptime["checks"] >= 1
        assert uptime["uptime_pct"] == 100.0
        assert uptime["p50_ms"] is not None


async def test_the_expected_status_decides_what_is_up(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/gone", status=410)
    default = await check_site(resources.http, monitor(url), regex_timeout_s=1)
    expected = await check_site(
        resources.http, monitor(url, expected_status="200-299,410"), regex_timeout_s=1
    )
    assert (default.up, expected.up) == (False, True)
    ok = target_server.route("/ok")
    strict = await check_site(resources.http, monitor(ok, expected_status="204"), regex_timeout_s=1)
    assert strict.up is False


async def test_must_not_match_is_up_only_without_the_pattern(
    resources: Resources, target_server: TargetServer
) -> None:
    url = target_server.route("/page", body=b"Service Unavailable")
    found = await check_site(
        resources.http,
        monitor(url, regex="Unavailable", regex_mode="must_not_match"),
        regex_timeout_s=1,
    )
    absent = await check_site(
        resources.http,
        monitor(url, regex="Maintenance", regex_mode="must_not_match"),
        regex_timeout_s=1,
    )
    assert (found.regex_matched, found.up) == (True, False)
    assert (absent.regex_matched, absent.up) == (False, True)


async def test_a_tcp_port_is_up_when_it_accepts_and_down_when_it_refuses(
    resources: Resources, target_server: TargetServer
) -> None:
    listening = await check_site(
        resources.http, monitor(f"tcp://127.0.0.1:{target_server.port}"), regex_timeout_s=1
    )
    assert listening.up is True
    assert listening.connect_ms is not None and listening.response_time_ms is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = await check_site(
        resources.http, monitor(f"tcp://127.0.0.1:{closed_port}"), regex_timeout_s=1
    )
    assert (refused.up, refused.error_kind) == (False, "connect")
    named = await check_site(
        resources.http, monitor(f"tcp://localhost.:{target_server.port}"), regex_timeout_s=1
    )
    assert named.up is True


async def test_tcp_checks_go_through_the_guard(target_server: TargetServer) -> None:
    async with GuardedClient(allow_private=False) as guarded:
        result = await check_site(
            guarded, monitor(f"tcp://127.0.0.1:{target_server.port}"), regex_timeout_s=1
        )
        named = await check_site(
            guarded, monitor(f"tcp://localhost:{target_server.port}"), regex_timeout_s=1
        )
    assert (result.up, result.error_kind) == (False, "other")
    assert "loopback" in (result.error or "")
    assert (named.up, named.error_kind) == (False, "other")
    assert target_server.hits == {}


async def test_a_trailing_dot_host_is_checked_like_the_host(
    resources: Resources, target_server: TargetServer
) -> None:
    target_server.route("/dot", body=b"fully qualified")
    url = f"http://localhost.:{target_server.port}/dot"
    result = await check_site(resources.http, monitor(url, regex="qualified"), regex_timeout_s=1)
    assert (result.up, result.status_code, result.regex_matched) == (True, 200, True)


@pytest.fixture
def short_lived_tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, datetime]:
    """A server context with a certificate for 127.0.0.1 that expires in five days, a client
    context trusting its authority, and the expiry."""
    authority = trustme.CA()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=5)
    certificate = authority.issue_cert("127.0.0.1", not_after=expires)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client, expires


async def test_the_certificate_expiry_of_a_tls_target_is_recorded(
    short_lived_tls: tuple[ssl.SSLContext, ssl.SSLContext, datetime],
) -> None:
    server_context, client_context, expires = short_lived_tls
    app = web.Application()

    async def secure(request: web.Request) -> web.Response:
        return web.Response(text="secure")

    app.router.add_get("/", secure)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with GuardedClient(allow_private=True, ssl_context=client_context) as client:
            result = await check_site(
                client, monitor(f"https://127.0.0.1:{port}/"), regex_timeout_s=1
            )
        async with GuardedClient(allow_private=True) as untrusting:
            refused = await check_site(
                untrusting, monitor(f"https://127.0.0.1:{port}/"), regex_timeout_s=1
            )
    finally:
        await runner.cleanup()
    assert result.up is True
    assert result.tls_expires_at == expires
    # Without the authority the certificate is not trusted: the check fails instead.
    assert (refused.up, refused.error_kind) == (False, "tls")


async def test_a_catastrophic_regex_does_not_hold_up_the_api(
    resources: Resources, target_server: TargetServer, app: Any
) -> None:
    """While a search that would run for ever works on a 1 MB page, the API still answers:
    the search runs outside the event loop and stops at its time bound."""
    url = target_server.route("/huge", body=b"a" * (1024 * 1024 - 1) + b"!")
    check = asyncio.create_task(
        check_site(resources.http, monitor(url, regex=r"(a+)+$"), regex_timeout_s=3)
    )
    deadline = time.monotonic() + 10
    while target_server.sent_bytes["/huge"] < 1024 * 1024:
        assert time.monotonic() < deadline, "the page was never served"
        await asyncio.sleep(0.01)
    answered = await app.client.get("/healthz")
    assert answered.status_code == 200
    assert not check.done(), "the search ended before /healthz could answer"
    result = await check
    assert result.error_kind == "other"
    assert "regex search took longer" in (result.error or "")
