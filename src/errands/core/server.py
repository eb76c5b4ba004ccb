"""The HTTP server's guard against slow and piled-up clients: uvicorn's httptools protocol with
a deadline for a request's headers, an idle limit while its body arrives, and a connection cap.

uvicorn alone closes only idle keep-alive connections: one that sends a header line now and then
is kept for ever, and connections over `limit_concurrency` are still read before their 503.
"""

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["guarded_http_protocol"]

_TIMEOUT_DETAIL = b'{"detail": "the request headers took too long to arrive"}'
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_TIMEOUT_DETAIL)).encode() + b"\r\n"
    b"connection: close\r\n"
    b"\r\n" + _TIMEOUT_DETAIL
)


def guarded_http_protocol(
    *, header_timeout_s: float, body_idle_timeout_s: float, max_connections: int
) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these limits:

    - a request's headers must all arrive within `header_timeout_s` of its first byte (or of the
      connection opening), else the client gets a 408 and the connection closes;
    - while its body arrives, no `body_idle_timeout_s` may pass without a byte, else the
      connection closes (the route sees the client disconnect);
    - a connection beyond `max_connections` open ones is closed as soon as it is accepted.
    """

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm(header_timeout_s, self._headers_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a keep-alive connection's next request
                self._arm(header_timeout_s, self._headers_too_slow)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            self._arm(body_idle_timeout_s, self._body_stalled)

        def on_body(self, body: bytes) -> None:
            self._arm(body_idle_timeout_s, self._body_stalled)
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _arm(self, after_s: float, callback: Callable[[], None]) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(after_s, callback)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(REQUEST_TIMEOUT_RESPONSE)
                self.transport.close()

        def _body_stalled(self) -> None:
            self._deadline = None
            if self.flow.read_paused:
                # The route has not taken what arrived yet: the wait is ours, not the client's.
                self._arm(body_idle_timeout_s, self._body_stalled)
            elif not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol
