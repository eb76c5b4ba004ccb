"""How routes reach the app, at the least cost per request.

FastAPI's `include_router` keeps each router as a branch of the app's routes, which every
request walks whole (to see whether it changed) and matches twice; the feature routers take no
include-time options, so `add_routes` puts their routes on the app itself instead.

FastAPI's work per request (solving dependencies, validating the answer) still costs a one-row
read more than the read itself. A `PlainRoute` is a Starlette route put ahead of FastAPI's
routes for the reads clients poll most. Its path takes only the canonical spelling of its
parameters (a Starlette convertor: `{id:uuid}` is a lower-case hyphenated UUID, as the API
writes ids), so any other request goes on to the FastAPI route of the same path, which
documents it in the schema and validates what it is sent.
"""

from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["PlainRoute", "add_routes"]


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Serve `router`'s routes from the app itself; they carry their router's tags, responses
    and dependencies already."""
    app.router.routes.extend(router.routes)


class PlainRoute(Route):
    """A Starlette route with FastAPI's two marks the middlewares read: `tags` (for the API key
    scope the route needs) and, once matched, itself as the scope's `route` (for its label in
    the request log, the stats and Prometheus)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
        *,
        methods: Sequence[str],
        tags: Sequence[str],
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods))
        self.tags = list(tags)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)
