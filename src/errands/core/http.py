"""The one outbound HTTP client: a shared aiohttp session that refuses private targets.

Exceptions: OutboundError (kind says what failed) <- BlockedTarget ("blocked"), BodyTooLarge.
Called from a claimed row's handler, a request is refused with claims.LeaseLapsed (not an
OutboundError, so no handler takes it for a failed request) once that row's lease may have lapsed.
"""

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import Any, Literal, Self

import aiohttp
from aiohttp import connector as aiohttp_connector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from errands.config import Settings
from errands.core.claims import current_lease

__all__ = [
    "BlockedTarget",
    "BodyTooLarge",
    "FetchedResponse",
    "GuardedClient",
    "GuardingResolver",
    "OutboundError",
    "OutboundKind",
    "Phases",
    "TcpConnected",
    "is_blocked_address",
    "masked_url",
]

OutboundKind = Literal[
    "blocked", "dns", "connect", "tls", "timeout", "too_large", "redirect", "other"
]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Headers that carry the caller's credentials must not follow a redirect to another origin.
_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")
_READ_CHUNK_BYTES = 64 * 1024
# Enough parallelism for one site without letting a single target take the whole pool.
_LIMIT_PER_HOST = 32
_DNS_CACHE_TTL_S = 60
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
# aiohttp warns when asked to clean up closed TLS transports on Pythons that no longer need it.
_CLEANUP_CLOSED: bool = getattr(aiohttp_connector, "NEEDS_CLEANUP_CLOSED", False)


class OutboundError(Exception):
    def __init__(self, message: str, *, kind: OutboundKind = "other") -> None:
        super().__init__(message)
        self.kind: OutboundKind = kind


class BlockedTarget(OutboundError):
    def __init__(self, message: str) -> None:
        super().__init__(message, kind="blocked")


class BodyTooLarge(OutboundError):
    def __init__(self, message: str) -> None:
        super().__init__(message, kind="too_large")


@dataclass(frozen=True)
class Phases:
    """Milliseconds per phase of the final request; None when it did not happen (reused
    connection, cached DNS). aiohttp's tracing does not separate the TLS handshake from the TCP
    connect, so connect_ms includes it and tls_ms stays None."""

    dns_ms: float | None
    connect_ms: float | None
    tls_ms: float | None
    first_byte_ms: float | None


@dataclass(frozen=True)
class FetchedResponse:
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    truncated: bool
    elapsed_ms: float
    phases: Phases
    peer_certificate: bytes | None = None  # DER, for https: the certificate the server sent


@dataclass(frozen=True)
class TcpConnected:
    dns_ms: float | None
    connect_ms: float


def masked_url(url: str) -> str:
    """The URL with any `user:password@` replaced by `***@`, fit to show in an answer or a log."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return url
    if parsed.raw_user is None and parsed.raw_password is None:
        return url
    return str(parsed.with_user(None)).replace("://", "://***@", 1)


def _why_blocked(ip: IPAddress) -> str | None:
    """Say why an address may not be contacted, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # A mapped address reaches exactly the IPv4 host it embeds, so judge that host.
            return _why_blocked(ip.ipv4_mapped)
        embedded = ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is None and ip in _NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (reason := _why_blocked(embedded)) is not None:
            return f"a tunnel to {embedded} ({reason})"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        # Deprecated, yet still routed inside a site; Python counts it as neither private nor
        # reserved.
        return "site-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


# Says why an address is refused, or None to allow it; tests narrow it to reach loopback hops.
AddressPolicy = Callable[[IPAddress], str | None]


def is_blocked_address(ip: IPAddress) -> bool:
    """True when the guard refuses to connect to this address."""
    return _why_blocked(ip) is not None


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class GuardingResolver(AbstractResolver):
    """Resolves through `inner`, then drops blocked addresses; aiohttp connects only to what is
    returned here, so the address checked is the address used (no DNS rebinding window)."""

    def __init__(
        self,
        inner: AbstractResolver,
        *,
        allow_private: bool,
        why_blocked: AddressPolicy = _why_blocked,
    ) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._why_blocked = why_blocked

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # "example.com." is the same name written fully qualified; resolvers that read
        # /etc/hosts or add search domains know it only without the dot.
        results = await self._inner.resolve(host.removesuffix("."), port, family)
        if self._allow_private:
            return results
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            ip = _parse_ip(result["host"])
            # An answer that is not an address cannot be judged, so it is refused.
            reason = "unparseable" if ip is None else self._why_blocked(ip)
            if reason is None:
                allowed.append(result)
            else:
                refused.append(f"{result['host']} ({reason})")
        if not allowed:
            found = ", ".join(refused) or "no addresses"
            raise BlockedTarget(f"refused {host}: it resolves only to {found}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class _Timings:
    """Monotonic timestamps of one request, filled in by the trace hooks."""

    def __init__(self) -> None:
        self.request_start: float | None = None
        self.dns_start: float | None = None
        self.dns_end: float | None = None
        self.connect_start: float | None = None
        self.connect_end: float | None = None
        self.headers_received: float | None = None

    def phases(self) -> Phases:
        dns_ms = _span_ms(self.dns_start, self.dns_end)
        connect_ms = _span_ms(self.connect_start, self.connect_end)
        if connect_ms is not None and dns_ms is not None:
            # aiohttp's connection-create span includes the name lookup.
            connect_ms = max(connect_ms - dns_ms, 0.0)
        return Phases(
            dns_ms=dns_ms,
            connect_ms=connect_ms,
            tls_ms=None,
            first_byte_ms=_span_ms(self.request_start, self.headers_received),
        )


def _span_ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) * 1000


def _mark(attribute: str) -> Any:
    async def hook(_session: aiohttp.ClientSession, context: SimpleNamespace, _params: Any) -> None:
        timings = context.trace_request_ctx
        if isinstance(timings, _Timings):
            setattr(timings, attribute, time.perf_counter())

    return hook


def _trace_config() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_mark("request_start"))
    trace.on_dns_resolvehost_start.append(_mark("dns_start"))
    trace.on_dns_resolvehost_end.append(_mark("dns_end"))
    trace.on_connection_create_start.append(_mark("connect_start"))
    trace.on_connection_create_end.append(_mark("connect_end"))
    # aiohttp signals request end once the status line and headers have arrived.
    trace.on_request_end.append(_mark("headers_received"))
    return trace


def _translate(error: BaseException, url: URL) -> OutboundError:
    """Turn an aiohttp or timeout failure into a short OutboundError naming the target."""
    if isinstance(error, OutboundError):
        return error
    host = url.host or str(url)
    if isinstance(error, TimeoutError):
        return OutboundError(f"{host} timed out", kind="timeout")
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return OutboundError(f"could not resolve {host}", kind="dns")
    if isinstance(error, aiohttp.ClientSSLError):
        return OutboundError(f"TLS with {host} failed: {error.os_error}", kind="tls")
    if isinstance(error, aiohttp.ClientConnectorError):
        return OutboundError(f"could not connect to {host}:{url.port}", kind="connect")
    return OutboundError(f"request to {host} failed: {_reason(error)}", kind="other")


def _reason(error: BaseException) -> str:
    """What went wrong, in words a person can act on, never an exception's repr."""
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before it answered"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "the answer's body was cut short or malformed"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"the answer was not valid HTTP ({error.message or error.status})"
    if isinstance(error, aiohttp.ClientOSError):
        return error.strerror or "the connection failed"
    return str(error) or type(error).__name__


def _peer_certificate(response: aiohttp.ClientResponse) -> bytes | None:
    # aiohttp hands the connection back to its pool as soon as a short body has arrived, so the
    # response's protocol (which it keeps) is where the TLS session can still be read.
    protocol = response.connection.protocol if response.connection else response._protocol
    transport = None if protocol is None else protocol.transport
    if transport is None:
        return None
    tls = transport.get_extra_info("ssl_object")
    if not isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
        return None
    der: bytes | None = tls.getpeercert(binary_form=True)
    return der


async def _open_first(addresses: list[ResolveResult], port: int) -> asyncio.StreamWriter:
    """Connect to the first of the (already checked) addresses that accepts."""
    failure: OSError | None = None
    for address in addresses:
        try:
            _reader, writer = await asyncio.open_connection(address["host"], port)
        except OSError as error:
            failure = error
            continue
        return writer
    raise failure or OSError(f"no address to connect to on port {port}")


def _redirected_method(method: str, status: int) -> str:
    # Browsers turn POST into GET on 301/302, and anything but HEAD into GET on 303.
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


class GuardedClient:
    """Outbound HTTP for every feature: one pooled session, the address guard, our redirects."""

    def __init__(
        self,
        *,
        allow_private: bool,
        max_connections: int = 1000,
        max_body_bytes: int = 1 << 20,
        timeout_s: float = 10.0,
        user_agent: str = "Errands/0.1",
        resolver: AbstractResolver | None = None,
        why_blocked: AddressPolicy = _why_blocked,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._ssl_context = ssl_context
        self._why_blocked = why_blocked
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._timeout_s = timeout_s
        self._user_agent = user_agent
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardingResolver | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "GuardedClient":
        return cls(
            allow_private=settings.allow_private_targets,
            max_connections=settings.http_max_connections,
            max_body_bytes=settings.http_max_body_bytes,
            timeout_s=settings.http_timeout_s,
        )

    async def __aenter__(self) -> Self:
        # The default resolver needs the running loop, so it is built here, not in __init__.
        inner = self._inner_resolver or DefaultResolver()
        self._resolver = GuardingResolver(
            inner, allow_private=self._allow_private, why_blocked=self._why_blocked
        )
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=min(_LIMIT_PER_HOST, self._max_connections),
            ttl_dns_cache=_DNS_CACHE_TTL_S,
            resolver=self._resolver,
            enable_cleanup_closed=_CLEANUP_CLOSED,
            ssl=self._ssl_context or True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self._user_agent},
            # Errands fetch on behalf of many users; cookies from one must never reach another.
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[_trace_config()],
            auto_decompress=True,
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # The connector does not own a resolver it was given, so it is closed here.
            await self._resolver.close()
            self._resolver = None

    def check_url(self, url: str) -> None:
        """Refuse a non-http(s) scheme, a missing host, or an IP-literal host in a blocked range.
        Host names are checked when they are resolved."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as error:
            raise BlockedTarget(f"refused {url!r}: not a valid URL") from error
        self._check(parsed)

    def check_tcp_target(self, url: str) -> tuple[str, int]:
        """The host and port of a `tcp://host:port` URL, refused as check_url refuses."""
        try:
            parsed = URL(url)
            port = parsed.port
        except (ValueError, TypeError) as error:
            raise BlockedTarget(f"refused {url!r}: not a valid URL") from error
        if parsed.scheme != "tcp" or parsed.explicit_port is None or port is None:
            raise BlockedTarget(f"refused {url!r}: a TCP target is tcp://host:port")
        if parsed.path not in ("", "/") or parsed.query_string or parsed.fragment:
            raise BlockedTarget(f"refused {url!r}: a TCP target has no path, query or fragment")
        self._check_host(parsed)
        return (parsed.host or "").removesuffix("."), port

    async def connect_tcp(self, url: str, *, timeout_s: float) -> TcpConnected:
        """Open a TCP connection to a `tcp://host:port` URL through the guard, then close it."""
        if self._resolver is None:
            raise RuntimeError("GuardedClient is not open; use it as `async with client:`")
        host, port = self.check_tcp_target(url)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                addresses = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
                resolved = time.perf_counter()
                dns_ms = None if _parse_ip(host) else round((resolved - started) * 1000, 3)
                connecting = time.perf_counter()
                writer = await _open_first(addresses, port)
                connect_ms = (time.perf_counter() - connecting) * 1000
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except TimeoutError:
            raise OutboundError(f"{host}:{port} timed out", kind="timeout") from None
        except OutboundError:
            raise
        except OSError as error:
            kind: OutboundKind = "dns" if isinstance(error, socket.gaierror) else "connect"
            what = "could not resolve" if kind == "dns" else "could not connect to"
            raise OutboundError(f"{what} {host}:{port}", kind=kind) from None
        return TcpConnected(dns_ms=dns_ms, connect_ms=round(connect_ms, 3))

    def _check(self, url: URL) -> None:
        if url.scheme not in _ALLOWED_SCHEMES:
            raise BlockedTarget(f"refused {url}: scheme {url.scheme!r} is not http or https")
        self._check_host(url)

    def _check_host(self, url: URL) -> None:
        try:
            host = url.host
        except UnicodeError:  # an xn-- label that is not valid punycode
            raise BlockedTarget(f"refused {url.raw_host}: not a valid host name") from None
        if not host:
            raise BlockedTarget(f"refused {url}: it has no host")
        if self._allow_private:
            return
        ip = _parse_ip(host)
        if ip is None:
            # Legacy numeric forms (127.1, 2130706433) reach addresses the literal check misses.
            if host.replace(".", "").isdigit():
                raise BlockedTarget(f"refused {host}: not a canonical IPv4 address")
            return
        reason = self._why_blocked(ip)
        if reason is not None:
            raise BlockedTarget(f"refused {host}: {ip} is {reason}")

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        timeout_s: float | None = None,
        max_redirects: int = 5,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Yield the final response after guarded redirects, its body unread."""
        async with self._exchange(
            method,
            url,
            headers=headers,
            json=json,
            data=data,
            timeout_s=timeout_s,
            max_redirects=max_redirects,
        ) as (response, _timings):
            yield response

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        timeout_s: float | None = None,
        max_redirects: int = 5,
        max_body_bytes: int | None = None,
        truncate: bool = True,
    ) -> FetchedResponse:
        """Fetch and read at most max_body_bytes of the decoded body."""
        cap = self._max_body_bytes if max_body_bytes is None else max_body_bytes
        started = time.perf_counter()
        async with self._exchange(
            method,
            url,
            headers=headers,
            json=json,
            data=data,
            timeout_s=timeout_s,
            max_redirects=max_redirects,
        ) as (response, timings):
            peer_certificate = _peer_certificate(response)
            body = bytearray()
            truncated = False
            while True:
                # Asking for one byte past the cap tells "exactly the cap" from "more than it"
                # while never holding more than cap + 1 bytes.
                chunk = await response.content.read(min(cap + 1 - len(body), _READ_CHUNK_BYTES))
                if not chunk:
                    break
                body += chunk
                if len(body) > cap:
                    if not truncate:
                        raise BodyTooLarge(f"{response.url.host} sent more than {cap} bytes")
                    del body[cap:]
                    truncated = True
                    break
            return FetchedResponse(
                url=str(response.url),
                status=response.status,
                headers=response.headers,
                body=bytes(body),
                truncated=truncated,
                elapsed_ms=(time.perf_counter() - started) * 1000,
                phases=timings.phases(),
                peer_certificate=peer_certificate,
            )

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        json: Any,
        data: bytes | None,
        timeout_s: float | None,
        max_redirects: int,
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, _Timings]]:
        if self._session is None:
            raise RuntimeError("GuardedClient is not open; use it as `async with client:`")
        session = self._session
        budget_s = self._timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s
        hop_headers = CIMultiDict(headers or {})
        try:
            current = URL(url)
        except (ValueError, TypeError) as error:
            raise BlockedTarget(f"refused {url!r}: not a valid URL") from error

        for hop in range(max(max_redirects, 0) + 1):
            self._check(current)
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise OutboundError(f"{current.host} timed out", kind="timeout")
            timings = _Timings()
            if (lease := current_lease()) is not None:
                lease.check()  # for a claimed row: never send once its lease may have lapsed
            try:
                response = await session.request(
                    method,
                    current,
                    headers=hop_headers,
                    json=json,
                    data=data,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=remaining_s),
                    trace_request_ctx=timings,
                )
            except (aiohttp.ClientError, TimeoutError) as error:
                raise _translate(error, current) from error

            location = response.headers.get("Location")
            if response.status not in _REDIRECT_STATUSES or location is None:
                break
            response.release()
            if hop == max_redirects:
                raise OutboundError(
                    f"{url} redirected more than {max_redirects} times", kind="redirect"
                )
            try:
                target = current.join(URL(location))
            except (ValueError, TypeError) as error:
                raise OutboundError(
                    f"{current.host} redirected to an invalid URL", kind="redirect"
                ) from error
            new_method = _redirected_method(method, response.status)
            if new_method != method:
                method, json, data = new_method, None, None
                hop_headers.popall("Content-Type", None)
            if (target.scheme, target.raw_host, target.port) != (
                current.scheme,
                current.raw_host,
                current.port,
            ):
                for name in _CREDENTIAL_HEADERS:
                    hop_headers.popall(name, None)
            current = target

        try:
            yield response, timings
        except (aiohttp.ClientError, TimeoutError) as error:
            # Failures while the caller reads the body get the same short, typed errors.
            raise _translate(error, current) from error
        finally:
            # aiohttp closes rather than reuses the connection if the body was left unread.
            response.release()
