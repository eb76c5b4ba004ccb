"""One timing point per request: the outermost middleware gives each request its id, times it
once, and hands what it saw to the request log, the usage stats and Prometheus."""

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from prometheus_client import Gauge
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FinishedRequest", "RequestObserver", "RequestTimingMiddleware"]


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    method: str
    path: str
    # The matched API route's template ("/timer/{timer_id}"); None when no route matched (404,
    # 405) or a middleware answered before the router (401, 413).
    route: str | None
    status: int
    duration_s: float


RequestObserver = Callable[[FinishedRequest], None]


class RequestTimingMiddleware:
    """Give every request an id (kept from `X-Request-ID` when sent), bound to its log lines
    and returned in the response; time it once and tell each observer how it went.
    `in_progress` (labelled by method) counts the requests being answered."""

    def __init__(
        self, app: ASGIApp, observers: Sequence[RequestObserver], in_progress: Gauge
    ) -> None:
        self.app = app
        self.observers = tuple(observers)
        self.in_progress = in_progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or secrets.token_hex(16)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        in_progress = self.in_progress.labels(scope["method"])
        in_progress.inc()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                in_progress.dec()
                # The router put the matched route in the scope on the way in.
                route = scope.get("route")
                finished = FinishedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    route=route.path_format if isinstance(route, Route) else None,
                    status=status,
                    duration_s=time.perf_counter() - started,
                )
                for observe in self.observers:
                    observe(finished)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 128 and text.isprintable():
                return text
    return None
