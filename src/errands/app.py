"""The FastAPI application: routes of every feature, the lifespan that opens resources, and the
background loops this process runs beside the API."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from errands.config import Settings
from errands.conversions.api import router as conversions_router
from errands.core.auth import PUBLIC_PATHS, ApiKeyMiddleware
from errands.core.errors import ErrandsError
from errands.core.limits import BodyLimitMiddleware
from errands.core.logging import RequestLogMiddleware
from errands.core.metrics import instrument
from errands.core.resources import open_resources
from errands.core.validation import render_validation_error
from errands.loops import run_loops
from errands.monitors.api import router as monitors_router
from errands.stats.api import router as stats_router
from errands.stats.recorder import StatsMiddleware, StatsRecorder, flush_stats_until
from errands.timers.api import router as timers_router
from errands.titles.api import previews_router
from errands.titles.api import router as titles_router

__all__ = ["create_app"]

log = structlog.get_logger(__name__)

READY_CHECK_TIMEOUT_S = 2.0
# Routes that stream their body within ERRANDS_UPLOAD_MAX_BYTES instead of the JSON cap.
UPLOAD_PATHS = frozenset({"/uploads"})


def create_app(settings: Settings, *, loops: Sequence[str] = ()) -> FastAPI:
    """The app for `settings`; `loops` names the background loops to run in this process."""
    stats_recorder = StatsRecorder()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            app.state.draining = False
            stop = asyncio.Event()
            background = asyncio.create_task(run_loops(resources, loops, stop), name="loops")
            background.add_done_callback(_exit_if_failed)
            stats = asyncio.create_task(
                flush_stats_until(
                    stats_recorder, resources.pool, settings.stats_flush_interval_s, stop
                ),
                name="stats",
            )
            stats.add_done_callback(_exit_if_failed)
            try:
                yield
            finally:
                app.state.draining = True
                stop.set()
                await asyncio.gather(background, stats, return_exceptions=True)

    app = FastAPI(
        title="Errands",
        version="0.1.0",
        summary="Titles, conversions, webhook timers and website monitors in one service.",
        lifespan=lifespan,
    )
    # Outermost last: every request gets an id and a log line, then is counted, then its key
    # and body size are checked before any route reads it.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes, upload_paths=UPLOAD_PATHS
    )
    if settings.api_keys_enabled:
        app.add_middleware(ApiKeyMiddleware, cache_s=settings.api_key_cache_s)
    instrument(app)
    app.openapi = _openapi_with_common_errors(app, keys=settings.api_keys_enabled)  # type: ignore[method-assign]
    app.add_middleware(StatsMiddleware, recorder=stats_recorder)
    app.state.stats_recorder = stats_recorder
    app.add_middleware(RequestLogMiddleware)
    app.add_exception_handler(ErrandsError, _render_errands_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, render_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(psycopg.OperationalError, _render_database_unavailable)  # type: ignore[arg-type]

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    async def readyz(request: Request) -> JSONResponse:
        """The process takes traffic: not shutting down, and the database answers."""
        if request.app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                async with request.app.state.resources.pool.connection() as conn:
                    await conn.execute("SELECT 1")
        except Exception as error:  # any failure to reach the database means "not ready"
            return JSONResponse(
                {"status": "database unreachable", "error": type(error).__name__},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    for router in (
        titles_router,
        previews_router,
        stats_router,
        timers_router,
        conversions_router,
        monitors_router,
    ):
        app.include_router(router)
    return app


async def _render_errands_error(request: Request, error: ErrandsError) -> JSONResponse:
    return JSONResponse({"detail": error.detail}, status_code=error.status_code)


DATABASE_RETRY_AFTER_S = 5


async def _render_database_unavailable(
    request: Request, error: psycopg.OperationalError
) -> JSONResponse:
    """The database could not be reached (or the pool waited in vain for a connection): the
    request may succeed if sent again, which a 503 with Retry-After says and a 500 does not."""
    log.warning("database_unavailable", path=request.url.path, error=str(error))
    return JSONResponse(
        {"detail": "the database is unavailable; try again shortly"},
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


ERROR_DETAIL = {
    "title": "ErrorDetail",
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string"}},
}


def _openapi_with_common_errors(app: FastAPI, *, keys: bool) -> Callable[[], dict[str, Any]]:
    """The schema, documenting the answers any route may give besides its own: an id that names
    nothing (404), a body that cannot be decoded (400) or is too large (413), API key refusals
    (401, 403), a database out of reach (503), and `{"detail": "..."}` beside FastAPI's
    validation list for 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorDetail"] = ERROR_DETAIL
        detail = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}
        validation = {"$ref": "#/components/schemas/HTTPValidationError"}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                common = {}
                if any(parameter["in"] == "path" for parameter in operation.get("parameters", [])):
                    common["404"] = "Nothing has this id"
                if "requestBody" in operation:
                    common["400"] = "The body cannot be decoded"
                    common["413"] = "The body is larger than allowed"
                if path not in PUBLIC_PATHS:
                    common["503"] = "The database is unavailable; try again shortly"
                if keys and path not in PUBLIC_PATHS:
                    common["401"] = "Missing, invalid or revoked API key"
                    common["403"] = "The API key lacks this route's scope"
                responses = operation.setdefault("responses", {})
                for status, description in common.items():
                    responses.setdefault(status, {"description": description, "content": detail})
                if "422" in responses:
                    content = responses["422"].setdefault("content", {})
                    listed = content.get("application/json", {}).get("schema")
                    choices = [validation, detail["application/json"]["schema"]]
                    choices += [listed] if listed is not None and listed not in choices else []
                    content["application/json"] = {"schema": {"anyOf": choices}}
        return schema

    return openapi


def _exit_if_failed(task: "asyncio.Task[None]") -> None:
    """A background loop that fails takes the process down, so a supervisor restarts it."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("background_loops_failed", error=repr(task.exception()))
        os.kill(os.getpid(), signal.SIGTERM)
