"""The FastAPI application: routes of every feature, the lifespan that opens resources, and the
background loops this process runs beside the API."""

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any, Literal

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict

from errands.config import Settings
from errands.console.access import mount_console
from errands.conversions.api import router as conversions_router
from errands.core.auth import (
    DOCS_ASSETS_PATH,
    KEY_OPTIONAL_PATH,
    PUBLIC_PATHS,
    ApiKeyMiddleware,
    is_open_path,
)
from errands.core.errors import ErrandsError, ErrorDetail
from errands.core.limits import BodyLimitMiddleware
from errands.core.logging import log_request
from errands.core.metrics import HTTP_REQUESTS_IN_PROGRESS, record_request, serve_metrics_route
from errands.core.resources import open_resources
from errands.core.routing import add_routes
from errands.core.timing import RequestTimingMiddleware
from errands.core.validation import render_validation_error
from errands.loops import run_loops
from errands.monitors.api import router as monitors_router
from errands.monitors.badges import router as badges_router
from errands.monitors.channels import router as channels_router
from errands.stats.api import router as stats_router
from errands.stats.recorder import StatsRecorder, flush_stats_until
from errands.timers.api import read_timer_route
from errands.timers.api import router as timers_router
from errands.timers.schedules_api import router as schedules_router
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

    # /docs and /redoc load Swagger UI and ReDoc from the package's own files, not a CDN, so
    # they work on a host without internet access.
    app = FastAPIOffline(
        title="Errands",
        version=version("errands"),
        summary="Titles, conversions, webhook timers and website monitors in one service.",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        static_url=DOCS_ASSETS_PATH,
        swagger_ui_parameters={"persistAuthorization": True},
        # Requests are timed once, by RequestTimingMiddleware; FastAPI's OpenTelemetry hooks
        # would look up their providers on every request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Outermost last: every request gets an id and is timed once for the log, the stats and
    # Prometheus, then its key and body size are checked before any route reads it.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes, upload_paths=UPLOAD_PATHS
    )
    if settings.api_keys_enabled:
        app.add_middleware(ApiKeyMiddleware, cache_s=settings.api_key_cache_s)
    app.add_middleware(
        RequestTimingMiddleware,
        observers=[log_request, stats_recorder.observe, record_request],
        in_progress=HTTP_REQUESTS_IN_PROGRESS,
    )
    serve_metrics_route(app)
    app.openapi = _openapi_with_common_errors(app, keys=settings.api_keys_enabled)  # type: ignore[method-assign]
    app.state.stats_recorder = stats_recorder
    app.add_exception_handler(ErrandsError, _render_errands_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, render_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(psycopg.OperationalError, _render_database_unavailable)  # type: ignore[arg-type]

    async def healthz(request: Request) -> JSONResponse:
        """The process is alive, and so is the embedded PostgreSQL it runs (which it restarts
        when it stops; until it is back this answers 503). HEAD answers the same without a
        body. Needs no API key."""
        embedded = request.app.state.resources.embedded
        if embedded is not None and not embedded.running:
            return JSONResponse({"status": "embedded database down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    for method in ("GET", "HEAD"):
        app.add_api_route(
            "/healthz",
            healthz,
            methods=[method],
            operation_id=f"healthz_{method.lower()}",
            tags=["operations"],
            summary="Liveness",
            response_model=Health,
            responses={
                200: {"content": {"application/json": {"example": {"status": "ok"}}}},
                503: {
                    "model": Health,
                    "description": "The embedded PostgreSQL this process runs is down",
                    "content": {
                        "application/json": {"example": {"status": "embedded database down"}}
                    },
                },
            },
        )

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness",
        response_model=Readiness,
        responses={
            200: {"content": {"application/json": {"example": {"status": "ready", "kafka": None}}}},
            503: {
                "model": Readiness,
                "description": "Shutting down, the database does not answer, or (deep) Kafka",
                "content": {
                    "application/json": {
                        "example": {
                            "status": "database unreachable",
                            "error": "PoolTimeout",
                            "kafka": None,
                        }
                    }
                },
            },
        },
    )
    async def readyz(request: Request, deep: bool = False) -> JSONResponse:
        """The process takes traffic: not shutting down, and the database answers within 2 s.
        The answer also says whether Kafka works for this process's checker and sink (`kafka`:
        null, or the problem); with `deep=true` a Kafka problem makes it 503 as well. Needs no
        API key."""
        if request.app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        kafka = request.app.state.resources.bus.health().problem
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                async with request.app.state.resources.pool.connection() as conn:
                    await conn.execute("SELECT 1")
        except Exception as error:  # any failure to reach the database means "not ready"
            return JSONResponse(
                {"status": "database unreachable", "error": type(error).__name__, "kafka": kafka},
                status_code=503,
            )
        if deep and kafka is not None:
            return JSONResponse({"status": "kafka unreachable", "kafka": kafka}, status_code=503)
        return JSONResponse({"status": "ready", "kafka": kafka})

    app.router.routes.append(read_timer_route)  # ahead of FastAPI's routes: see core/routing.py
    for router in (
        titles_router,
        previews_router,
        stats_router,
        timers_router,
        schedules_router,
        conversions_router,
        monitors_router,
        channels_router,
        badges_router,
    ):
        add_routes(app, router)
    mount_console(app)
    return app


API_DESCRIPTION = """
Every error answer (any 4xx, and a 503) has one shape, `{"detail": "<message>"}`, where
`detail` is always a string. For bad input it names each problem and the field it is in, at most
ten of them, separated by `; `, e.g. `hours: Input should be greater than or equal to 0; days:
unknown field; send only the fields this route documents`. JSON bodies must be sent with
`Content-Type: application/json` and may hold only the fields each route documents.

With API keys on (`ERRANDS_API_KEYS_ENABLED=true`), send `Authorization: Bearer <key>`; in this
page, use "Authorize" once and "Try it out" sends it.
"""


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok", "embedded database down"]


class Readiness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ready", "kafka": None}]})

    status: Literal["ready", "draining", "database unreachable", "kafka unreachable"]
    error: str | None = None
    kafka: str | None = None  # what fails in Kafka for this process's checker or sink


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


def _openapi_with_common_errors(app: FastAPI, *, keys: bool) -> Callable[[], dict[str, Any]]:
    """The schema, documenting the answers any route may give besides its own: an id that names
    nothing (404), a body that cannot be decoded (400) or is too large (413), bad input (422),
    API key refusals (401, 403) and a database out of reach (503); every error answer as the one
    `ErrorDetail` schema, and the API key scheme when keys are on."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorDetail"] = ErrorDetail.model_json_schema()
        if keys:
            schema["components"]["securitySchemes"] = {API_KEY_SCHEME: API_KEY_SECURITY}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                _document_common_answers(
                    operation,
                    public=path in PUBLIC_PATHS,
                    security=_security(path) if keys else None,
                )
        _drop_unused_schemas(schema)
        app.openapi_schema = schema
        return schema

    return openapi


API_KEY_SCHEME = "ApiKey"
API_KEY_SECURITY = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key from `errands keys create`, sent as `Authorization: Bearer <key>`.",
}
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorDetail"}
# What each answer every route may give means, and an example of its message.
COMMON_ANSWERS = {
    "400": ("The body cannot be decoded", "the body is not valid UTF-8"),
    "401": (
        "Missing, invalid or revoked API key",
        "missing API key: send the header 'Authorization: Bearer <key>'",
    ),
    "403": (
        "The API key lacks this route's scope",
        "API key 'ci' lacks the 'timers' scope for this route",
    ),
    "404": ("Nothing has this id", "no timer with id 5f0c8a4e-1d2b-4c3a-9e8f-7a6b5c4d3e2f"),
    "413": ("The body is larger than allowed", "the body is larger than the 1048576-byte limit"),
    "422": (
        "Bad input: the message names each problem and its field",
        "hours: Input should be greater than or equal to 0; days: unknown field; send only the "
        "fields this route documents",
    ),
    "503": (
        "The database is unavailable; try again shortly",
        "the database is unavailable; try again shortly",
    ),
}


def _security(path: str) -> list[dict[str, list[str]]] | None:
    """What the key middleware asks of `path`: nothing on open paths, a key or none on badges
    (none for a public monitor), a key everywhere else."""
    if is_open_path(path):
        return None
    if KEY_OPTIONAL_PATH.match(path):
        return [{API_KEY_SCHEME: []}, {}]
    return [{API_KEY_SCHEME: []}]


def _document_common_answers(
    operation: dict[str, Any], *, public: bool, security: list[dict[str, list[str]]] | None
) -> None:
    parameters = operation.get("parameters", [])
    common = []
    if any(parameter["in"] == "path" for parameter in parameters):
        common.append("404")
    if "requestBody" in operation:
        common += ["400", "413"]
    if parameters or "requestBody" in operation:
        common.append("422")
    if not public:
        common.append("503")
    if security is not None:
        common += ["401", "403"]
        operation["security"] = security
    responses = operation.setdefault("responses", {})
    for status in common:
        responses.setdefault(status, {"description": COMMON_ANSWERS[status][0]})
    for status, response in responses.items():
        if "text/html" in response.get("content", {}):
            continue  # a console page, whose errors are pages too
        if status.startswith("4") or (status == "503" and not public):
            listed = response.get("content", {}).get("application/json", {}).get("example")
            example = (
                listed
                if isinstance(listed, dict) and isinstance(listed.get("detail"), str)
                else {"detail": COMMON_ANSWERS.get(status, ("", response["description"]))[1]}
            )
            response["content"] = {"application/json": {"schema": ERROR_SCHEMA, "example": example}}


def _drop_unused_schemas(schema: dict[str, Any]) -> None:
    """Remove component schemas nothing refers to any more (FastAPI's validation list, and
    error models a route declared before they all became ErrorDetail)."""
    schemas = schema["components"]["schemas"]
    while True:
        text = json.dumps({key: value for key, value in schema.items()})
        unused = [name for name in schemas if f'"#/components/schemas/{name}"' not in text]
        if not unused:
            return
        for name in unused:
            del schemas[name]


def _exit_if_failed(task: "asyncio.Task[None]") -> None:
    """A background loop that fails takes the process down, so a supervisor restarts it."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("background_loops_failed", error=repr(task.exception()))
        os.kill(os.getpid(), signal.SIGTERM)
