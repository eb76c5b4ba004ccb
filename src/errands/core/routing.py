"""Plain Starlette routes for the reads clients poll most, matched ahead of FastAPI's routes.

FastAPI's work per request (matching through included routers, solving dependencies,
validating the answer) costs a one-row read more than the read itself. A `PlainRoute` is a
Starlette route put first in the app's routes. Its path takes only the canonical spelling of
its parameters (a Starlette convertor: `{id:uuid}` is a lower-case hyphenated UUID, as the API
writes ids), so any other request goes on to the FastAPI route of the same path, which
documents it in the schema and validates what it is sent.
"""

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["PlainRoute"]


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
