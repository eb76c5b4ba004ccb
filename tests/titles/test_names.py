"""Host names on the wire: IDNs go out in punycode, and a name resolving to a private address is
refused by the guard. A small hosts-file resolver points the test names at 127.0.0.1."""

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from errands.core.http import GuardedClient
from errands.titles.domains import parse_domain
from errands.titles.fetch import fetch_titles
from tests.fixtures.targets import TargetServer

HTML = "text/html; charset=utf-8"


class HostsResolver(AbstractResolver):
    """Resolves the given names to 127.0.0.1, as an /etc/hosts entry would."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host} is not in the test hosts")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def hosts() -> HostsResolver:
    return HostsResolver({"xn--bcher-kva.test", "evil.test"})


@pytest.fixture
async def open_client(hosts: HostsResolver) -> AsyncIterator[GuardedClient]:
    async with GuardedClient(allow_private=True, resolver=hosts) as client:
        yield client


async def test_an_idn_is_fetched_by_its_punycode_name(
    open_client: GuardedClient, hosts: HostsResolver, target_server: TargetServer
) -> None:
    target_server.route("/", body=b"<title>B\xc3\xbccher</title>", content_type=HTML)

    [page] = await fetch_titles(
        open_client,
        [parse_domain(f"Bücher.test:{target_server.port}")],
        timeout_s=5,
        max_body_bytes=1 << 20,
    )

    assert (page.status, page.title) == ("ok", "Bücher")
    assert page.url == f"http://xn--bcher-kva.test:{target_server.port}/"
    [request] = target_server.requests["/"]
    assert request.headers["Host"] == f"xn--bcher-kva.test:{target_server.port}"
    assert set(hosts.asked) == {"xn--bcher-kva.test"}


async def test_a_name_resolving_to_loopback_is_refused_when_guarded(
    hosts: HostsResolver, target_server: TargetServer
) -> None:
    target_server.route("/", body=b"<title>Internal</title>", content_type=HTML)

    async with GuardedClient(allow_private=False, resolver=hosts) as client:
        [page] = await fetch_titles(
            client,
            [parse_domain(f"evil.test:{target_server.port}")],
            timeout_s=5,
            max_body_bytes=1 << 20,
        )

    assert (page.status, page.title) == ("error", None)
    assert page.error is not None and "refused evil.test" in page.error
    assert "loopback" in page.error
    assert target_server.hits["/"] == 0
    # Refused at https, the http try is not made: it would reach the same address.
    assert page.url.startswith("https://")


async def test_an_unknown_name_is_an_error_without_an_http_try(
    open_client: GuardedClient,
) -> None:
    [page] = await fetch_titles(
        open_client, [parse_domain("nowhere.test")], timeout_s=5, max_body_bytes=1 << 20
    )

    assert page.status == "error"
    assert page.url == "https://nowhere.test/"
    assert page.error is not None and "resolve" in page.error
