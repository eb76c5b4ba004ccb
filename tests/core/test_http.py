import asyncio
import gzip
import ipaddress
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.abc import AbstractResolver, ResolveResult

from errands.config import Settings
from errands.core.http import (
    BlockedTarget,
    BodyTooLarge,
    GuardedClient,
    GuardingResolver,
    OutboundError,
    is_blocked_address,
)
from tests.fixtures.targets import TargetServer


class StaticResolver(AbstractResolver):
    """Answers from a fixed table, like an /etc/hosts the test controls; unknown names fail."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the table")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


@pytest_asyncio.fixture
async def open_client() -> AsyncIterator[GuardedClient]:
    """A client with the guard lifted, so it can reach the target server on 127.0.0.1."""
    async with GuardedClient(allow_private=True, timeout_s=5.0) as client:
        yield client


@pytest_asyncio.fixture
async def guarded_client() -> AsyncIterator[GuardedClient]:
    async with GuardedClient(allow_private=False, timeout_s=5.0) as client:
        yield client


# -- the address table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.2",
        "::1",
        "::",
        "fc00::1",
        "fd00::2",
        "fe80::1",
        "fec0::1",  # site-local
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:a00:1::",  # 6to4 around 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 around 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # teredo, client 127.0.0.1
    ],
)
def test_private_and_special_addresses_are_blocked(address: str) -> None:
    assert is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_blocked_address(ipaddress.ip_address(address))


# -- check_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/file", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("http:///no-host", "no host"),
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.5/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://127.1/", "not a canonical IPv4 address"),
        ("http://2130706433/", "not a canonical IPv4 address"),
        ("http://xn--zz/", "not a valid host name"),
        ("http://xn--/", "not a valid host name"),
    ],
)
def test_check_url_refuses_with_a_reason(url: str, says: str) -> None:
    client = GuardedClient(allow_private=False)
    with pytest.raises(BlockedTarget, match=says) as refused:
        client.check_url(url)
    assert refused.value.kind == "blocked"


@pytest.mark.parametrize(
    "url", ["http://example.com/", "https://8.8.8.8/dns", "https://[2606:4700:4700::1111]/"]
)
def test_check_url_lets_public_targets_through(url: str) -> None:
    GuardedClient(allow_private=False).check_url(url)


def test_allow_private_lifts_the_address_guard_but_not_the_scheme_check() -> None:
    client = GuardedClient(allow_private=True)
    client.check_url("http://127.0.0.1:8080/")
    client.check_url("http://[::1]/")
    with pytest.raises(BlockedTarget, match="scheme"):
        client.check_url("ftp://127.0.0.1/")


def test_from_settings_takes_the_guard_and_limits() -> None:
    settings = Settings(allow_private_targets=True, http_max_body_bytes=2048, http_timeout_s=3)
    client = GuardedClient.from_settings(settings)
    client.check_url("http://10.0.0.1/")


# -- the guard on real requests -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"])
async def test_loopback_ip_literals_are_refused_before_connecting(
    guarded_client: GuardedClient, target_server: TargetServer, host: str
) -> None:
    target_server.route("/secret", body=b"secret")
    with pytest.raises(BlockedTarget, match="loopback"):
        await guarded_client.fetch("GET", f"http://{host}:{target_server.port}/secret")
    assert target_server.hits["/secret"] == 0


async def test_localhost_is_refused_after_resolution(
    guarded_client: GuardedClient, target_server: TargetServer
) -> None:
    with pytest.raises(BlockedTarget, match=r"localhost.*127\.0\.0\.1 \(loopback\)"):
        await guarded_client.fetch("GET", f"http://localhost:{target_server.port}/")
    assert target_server.hits["/"] == 0


async def test_cloud_metadata_address_is_refused(guarded_client: GuardedClient) -> None:
    started = time.perf_counter()
    with pytest.raises(BlockedTarget, match=r"169\.254\.169\.254"):
        await guarded_client.fetch("GET", "http://169.254.169.254/latest/meta-data/")
    assert time.perf_counter() - started < 1.0


async def test_guarding_resolver_drops_blocked_answers_and_keeps_public_ones() -> None:
    inner = StaticResolver({"mixed.test": ["127.0.0.1", "10.0.0.1", "93.184.215.14"]})
    answers = await GuardingResolver(inner, allow_private=False).resolve("mixed.test", 80)
    assert [answer["host"] for answer in answers] == ["93.184.215.14"]


async def test_guarding_resolver_refuses_a_name_with_only_blocked_answers() -> None:
    inner = StaticResolver({"public.test": ["127.0.0.1", "::1"]})
    guard = GuardingResolver(inner, allow_private=False)
    with pytest.raises(BlockedTarget, match=r"public\.test.*127\.0\.0\.1 \(loopback\)"):
        await guard.resolve("public.test", 80)


async def test_guarding_resolver_passes_everything_when_private_is_allowed() -> None:
    inner = StaticResolver({"public.test": ["127.0.0.1"]})
    answers = await GuardingResolver(inner, allow_private=True).resolve("public.test", 80)
    assert [answer["host"] for answer in answers] == ["127.0.0.1"]


async def test_a_public_looking_name_resolving_to_loopback_is_refused(
    target_server: TargetServer,
) -> None:
    url = target_server.route("/secret").replace("127.0.0.1", "public.test")
    resolver = StaticResolver({"public.test": ["127.0.0.1"]})
    async with GuardedClient(allow_private=False, resolver=resolver) as client:
        with pytest.raises(BlockedTarget, match=r"public\.test"):
            await client.fetch("GET", url)
    assert target_server.hits["/secret"] == 0


async def test_the_injected_resolver_is_what_the_connection_uses(
    target_server: TargetServer,
) -> None:
    url = target_server.route("/page", body=b"hello").replace("127.0.0.1", "public.test")
    resolver = StaticResolver({"public.test": ["127.0.0.1"]})
    async with GuardedClient(allow_private=True, resolver=resolver) as client:
        fetched = await client.fetch("GET", url)
    assert fetched.body == b"hello"
    assert target_server.hits["/page"] == 1


async def test_a_trailing_dot_host_reaches_the_same_name(target_server: TargetServer) -> None:
    url = target_server.route("/page", body=b"hello").replace("127.0.0.1", "public.test.")
    resolver = StaticResolver({"public.test": ["127.0.0.1"]})
    async with GuardedClient(allow_private=True, resolver=resolver) as client:
        fetched = await client.fetch("GET", url)
    assert fetched.body == b"hello"


async def test_a_trailing_dot_localhost_resolves_like_localhost(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    # The system resolver reads /etc/hosts, which knows "localhost" but not "localhost.".
    url = target_server.route("/page", body=b"hello").replace("127.0.0.1", "localhost.")
    fetched = await open_client.fetch("GET", url)
    assert fetched.body == b"hello"


async def test_a_trailing_dot_host_is_still_guarded(target_server: TargetServer) -> None:
    url = target_server.route("/secret").replace("127.0.0.1", "public.test.")
    resolver = StaticResolver({"public.test": ["127.0.0.1"]})
    async with GuardedClient(allow_private=False, resolver=resolver) as client:
        with pytest.raises(BlockedTarget, match=r"public\.test"):
            await client.fetch("GET", url)
    assert target_server.hits["/secret"] == 0


# -- redirects ----------------------------------------------------------------------------------


async def test_redirects_are_followed_to_the_final_url(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    final = target_server.route("/final", body=b"arrived")
    middle = target_server.route("/middle", status=301, redirect_to=final)
    start = target_server.route("/start", redirect_to="/middle")  # relative Location
    fetched = await open_client.fetch("GET", start)
    assert (fetched.status, fetched.body, fetched.url) == (200, b"arrived", final)
    assert [target_server.hits[p] for p in ("/start", "/middle", "/final")] == [1, 1, 1]
    assert middle.endswith("/middle")


def allow_only_127_0_0_1(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The real policy, except that 127.0.0.1 plays a public site: the first hop of a redirect."""
    if str(ip) == "127.0.0.1":
        return None
    return "blocked" if is_blocked_address(ip) else None


@pytest.fixture
async def internal_server() -> AsyncIterator[TargetServer]:
    """A server on another loopback address, standing for an internal service."""
    async with TargetServer(host="127.0.0.2") as server:
        yield server


@pytest.mark.parametrize("by", ["address", "name"])
async def test_a_redirect_to_a_blocked_address_is_refused_at_that_hop(
    target_server: TargetServer, internal_server: TargetServer, by: str
) -> None:
    internal = internal_server.route("/admin", body=b"secrets")
    if by == "name":
        internal = internal.replace("127.0.0.2", "intranet.test")
    start = target_server.route("/start", redirect_to=internal)
    resolver = StaticResolver({"intranet.test": ["127.0.0.2"]})
    async with GuardedClient(
        allow_private=False, resolver=resolver, why_blocked=allow_only_127_0_0_1
    ) as client:
        with pytest.raises(BlockedTarget, match=r"127\.0\.0\.2|intranet\.test"):
            await client.fetch("GET", start)
    assert target_server.hits["/start"] == 1, "the first hop was allowed and followed"
    assert internal_server.hits["/admin"] == 0, "the internal service was never contacted"


async def test_a_redirect_to_an_invalid_host_name_is_refused(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    start = target_server.route("/start", redirect_to="http://xn--zz/")
    with pytest.raises(BlockedTarget, match="not a valid host name"):
        await open_client.fetch("GET", start)


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/file", "file:///etc/passwd"])
async def test_a_redirect_to_another_scheme_is_refused(
    open_client: GuardedClient, target_server: TargetServer, location: str
) -> None:
    start = target_server.route("/start", redirect_to=location)
    with pytest.raises(BlockedTarget, match="scheme"):
        await open_client.fetch("GET", start)
    assert target_server.hits["/start"] == 1


@pytest.mark.parametrize(("status", "method"), [(301, "GET"), (302, "GET"), (303, "GET")])
async def test_post_becomes_get_after_301_302_303(
    open_client: GuardedClient, target_server: TargetServer, status: int, method: str
) -> None:
    target_server.route("/done")
    start = target_server.route("/form", status=status, redirect_to="/done")
    await open_client.fetch("POST", start, json={"a": 1})
    received = target_server.requests["/done"][0]
    assert (received.method, received.body) == (method, b"")
    assert "Content-Type" not in received.headers


@pytest.mark.parametrize("status", [307, 308])
async def test_post_stays_post_after_307_308(
    open_client: GuardedClient, target_server: TargetServer, status: int
) -> None:
    target_server.route("/done")
    start = target_server.route("/form", status=status, redirect_to="/done")
    await open_client.fetch("POST", start, data=b"payload")
    received = target_server.requests["/done"][0]
    assert (received.method, received.body) == ("POST", b"payload")


async def test_too_many_redirects_is_an_error(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    loop = target_server.route("/loop", redirect_to="/loop")
    with pytest.raises(OutboundError, match="more than 3") as failed:
        await open_client.fetch("GET", loop, max_redirects=3)
    assert failed.value.kind == "redirect"
    assert target_server.hits["/loop"] == 4


async def test_credentials_are_not_sent_to_another_origin(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    async with TargetServer() as other:
        elsewhere = other.route("/landing")
        start = target_server.route("/start", redirect_to=elsewhere)
        await open_client.fetch("GET", start, headers={"Authorization": "Bearer x", "X-Id": "7"})
        received = other.requests["/landing"][0]
    assert "Authorization" not in received.headers
    assert received.headers["X-Id"] == "7"


# -- bodies -------------------------------------------------------------------------------------


async def test_a_huge_page_is_not_read_whole(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    size = 50 * 1024 * 1024
    cap = 64 * 1024
    url = target_server.route("/huge", size=size)
    fetched = await open_client.fetch("GET", url, max_body_bytes=cap)
    assert fetched.truncated
    assert len(fetched.body) == cap
    # The server could only push what the socket buffers hold before the client hung up.
    assert target_server.sent_bytes["/huge"] < size // 4, target_server.sent_bytes


async def test_a_body_over_the_cap_raises_when_truncation_is_off(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/big", size=10_000)
    with pytest.raises(BodyTooLarge, match="more than 4096 bytes") as failed:
        await open_client.fetch("GET", url, max_body_bytes=4096, truncate=False)
    assert failed.value.kind == "too_large"


async def test_a_body_exactly_at_the_cap_is_not_truncated(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/exact", size=4096)
    fetched = await open_client.fetch("GET", url, max_body_bytes=4096, truncate=False)
    assert (len(fetched.body), fetched.truncated) == (4096, False)


async def test_stream_lets_the_caller_stop_early(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route(
        "/title", chunks=[b"<title>Early</title>"] + [b"x" * 1024] * 1000, chunk_delay_s=0.01
    )
    started = time.perf_counter()
    async with open_client.stream("GET", url) as response:
        first = await response.content.readany()
    assert first.startswith(b"<title>Early</title>")
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("encoding", ["gzip", "brotli"])
async def test_compressed_bodies_are_decoded(
    open_client: GuardedClient, target_server: TargetServer, encoding: str
) -> None:
    page = b"<title>Compressed</title>" + b"a" * 5000
    url = target_server.route("/c", body=page, gzip=encoding == "gzip", brotli=encoding == "brotli")
    fetched = await open_client.fetch("GET", url)
    assert fetched.body == page
    assert "br" in target_server.requests["/c"][0].headers["Accept-Encoding"]


async def test_the_cap_counts_decoded_bytes(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/bomb", size=2 * 1024 * 1024, gzip=True)
    assert len(gzip.compress(b"." * 2 * 1024 * 1024)) < 4096  # small on the wire
    fetched = await open_client.fetch("GET", url, max_body_bytes=4096)
    assert (len(fetched.body), fetched.truncated) == (4096, True)


# -- failures, timeouts and timings -------------------------------------------------------------


async def test_a_slow_answer_times_out(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/slow", delay_s=5)
    started = time.perf_counter()
    with pytest.raises(OutboundError, match="timed out") as failed:
        await open_client.fetch("GET", url, timeout_s=0.2)
    assert failed.value.kind == "timeout"
    assert time.perf_counter() - started < 1.5


async def test_a_stalled_body_times_out(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/stall", chunks=[b"<html>"], never_close=True)
    with pytest.raises(OutboundError) as failed:
        await open_client.fetch("GET", url, timeout_s=0.3)
    assert failed.value.kind == "timeout"


async def test_a_stalled_body_times_out_while_streaming(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/stall", chunks=[b"<html>"], never_close=True)
    with pytest.raises(OutboundError) as failed:
        async with open_client.stream("GET", url, timeout_s=0.3) as response:
            await response.read()
    assert failed.value.kind == "timeout"


async def test_the_timeout_covers_all_redirect_hops(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    target_server.route("/b", delay_s=0.2, redirect_to="/c")
    target_server.route("/c", delay_s=0.2)
    start = target_server.route("/a", delay_s=0.2, redirect_to="/b")
    with pytest.raises(OutboundError) as failed:
        await open_client.fetch("GET", start, timeout_s=0.5)
    assert failed.value.kind == "timeout"


async def test_a_refused_connection_is_a_connect_error(open_client: GuardedClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OutboundError, match="could not connect") as failed:
        await open_client.fetch("GET", f"http://127.0.0.1:{port}/")
    assert failed.value.kind == "connect"


async def test_an_unknown_name_is_a_dns_error() -> None:
    async with GuardedClient(allow_private=False, resolver=StaticResolver({})) as client:
        with pytest.raises(OutboundError, match=r"could not resolve nowhere\.test") as failed:
            await client.fetch("GET", "http://nowhere.test/")
    assert failed.value.kind == "dns"


async def test_tls_to_a_plain_http_server_is_a_tls_error(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    with pytest.raises(OutboundError) as failed:
        await open_client.fetch("GET", target_server.url("/").replace("http:", "https:"))
    assert failed.value.kind == "tls"


async def test_phases_are_recorded_on_a_fresh_connection_only(
    target_server: TargetServer,
) -> None:
    url = target_server.route("/timed", delay_s=0.05).replace("127.0.0.1", "public.test")
    resolver = StaticResolver({"public.test": ["127.0.0.1"]})
    async with GuardedClient(allow_private=True, resolver=resolver) as client:
        fresh = await client.fetch("GET", url)
        reused = await client.fetch("GET", url)
    assert fresh.phases.dns_ms is not None and fresh.phases.dns_ms >= 0
    assert fresh.phases.connect_ms is not None and fresh.phases.connect_ms >= 0
    assert fresh.phases.first_byte_ms is not None and fresh.phases.first_byte_ms >= 50
    assert fresh.elapsed_ms >= fresh.phases.first_byte_ms
    assert (reused.phases.dns_ms, reused.phases.connect_ms) == (None, None)
    assert reused.phases.first_byte_ms is not None


async def test_headers_json_and_user_agent_are_sent(
    open_client: GuardedClient, target_server: TargetServer
) -> None:
    url = target_server.route("/hook", status=201, headers={"X-Reply": "yes"})
    fetched = await open_client.fetch("POST", url, json={"ok": True}, headers={"X-Key": "k"})
    received = target_server.requests["/hook"][0]
    assert (fetched.status, fetched.headers["X-Reply"]) == (201, "yes")
    assert received.body == b'{"ok": true}'
    assert received.headers["User-Agent"] == "Errands/0.1"
    assert received.headers["X-Key"] == "k"


async def test_the_client_must_be_opened_first() -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await GuardedClient(allow_private=True).fetch("GET", "http://example.com/")


async def test_a_server_that_hangs_up_is_described_in_words_not_as_an_exception_repr() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, GuardedClient(allow_private=True, timeout_s=5.0) as client:
        with pytest.raises(OutboundError) as raised:
            await client.fetch("GET", f"http://127.0.0.1:{port}/")
    assert str(raised.value) == (
        "request to 127.0.0.1 failed: the server closed the connection before it answered"
    )
