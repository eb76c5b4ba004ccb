"""The API's own documentation: every route documented in full, one error schema, the API key
scheme, strict request bodies, and /docs and /redoc working in a browser with no internet."""

import ast
import asyncio
import inspect
import shutil
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from errands.app import create_app
from errands.config import Settings
from errands.core import errors
from errands.core.auth import PUBLIC_PATHS, is_open_path
from tests.fixtures.app import RunningApp, serve_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
ERROR_STATUSES = {
    klass.__name__: str(klass.status_code)
    for klass in vars(errors).values()
    if isinstance(klass, type) and issubclass(klass, errors.ErrandsError)
}

APP = create_app(Settings(api_keys_enabled=True))
SCHEMA = APP.openapi()


def documented_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route in the schema (an APIRoute, or the same for a route of an included router)."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from documented_routes(contexts())
        elif (isinstance(route, APIRoute) or hasattr(route, "original_route")) and (
            route.include_in_schema
        ):
            yield route


ROUTES = list(documented_routes(APP.routes))
OPERATIONS = [
    (method.lower(), route.path_format, route)
    for route in ROUTES
    for method in sorted(route.methods)
    if method.lower() in SCHEMA["paths"][route.path_format]
]

OPERATION_IDS = [f"{method} {path}" for method, path, _ in OPERATIONS]


def operation_of(method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = SCHEMA["paths"][path][method]
    return operation


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref") or (schema.get("items") or {}).get("$ref")
    if reference is None:
        return schema
    resolved: dict[str, Any] = SCHEMA["components"]["schemas"][reference.rsplit("/", 1)[1]]
    return resolved


def has_example(content: dict[str, Any]) -> bool:
    return any(
        "example" in media or "examples" in media or "examples" in resolve(media.get("schema", {}))
        for media in content.values()
    )


def raised_errors(route: Any) -> set[str]:
    """The names of the ErrandsError classes the route's function raises itself."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(route.endpoint)))
    return {
        node.exc.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and isinstance(node.exc.func, ast.Name)
        and node.exc.func.id in ERROR_STATUSES
    }


def test_there_are_routes_to_check() -> None:
    assert {"/timer", "/titles", "/uploads", "/monitors", "/healthz"} <= set(SCHEMA["paths"])


@pytest.mark.parametrize(("method", "path", "route"), OPERATIONS, ids=OPERATION_IDS)
def test_every_route_has_a_summary_and_a_description(method: str, path: str, route: Any) -> None:
    operation = operation_of(method, path)
    assert route.summary, f"{method} {path}: no summary= (FastAPI would make one from its name)"
    assert operation["summary"] == route.summary
    assert len(operation.get("description", "")) > 20, f"{method} {path}: no description"


@pytest.mark.parametrize(("method", "path", "route"), OPERATIONS, ids=OPERATION_IDS)
def test_every_route_has_an_example_request_and_response(
    method: str, path: str, route: Any
) -> None:
    operation = operation_of(method, path)
    if "requestBody" in operation:
        assert has_example(operation["requestBody"]["content"]), f"{method} {path}: request"
    successes = [
        response["content"]["application/json"]
        for status, response in operation["responses"].items()
        if status.startswith("2") and "application/json" in response.get("content", {})
    ]
    for media in successes:  # file downloads answer bytes, shown by their media types
        assert has_example({"application/json": media}), f"{method} {path}: response"


@pytest.mark.parametrize(("method", "path", "route"), OPERATIONS, ids=OPERATION_IDS)
def test_every_status_a_route_raises_is_documented(method: str, path: str, route: Any) -> None:
    responses = operation_of(method, path)["responses"]
    for name in raised_errors(route):
        assert ERROR_STATUSES[name] in responses, f"{method} {path} raises {name}"
    if "requestBody" in operation_of(method, path):
        assert {"400", "413", "422"} <= set(responses)
    if path not in PUBLIC_PATHS:
        assert "503" in responses
    if not is_open_path(path):
        assert {"401", "403"} <= set(responses)


@pytest.mark.parametrize(("method", "path", "route"), OPERATIONS, ids=OPERATION_IDS)
def test_every_error_answer_is_the_one_error_schema(method: str, path: str, route: Any) -> None:
    """Every JSON error answer has the one schema; only the console's pages, which answer people
    in HTML, may answer an error in HTML too."""
    operation = operation_of(method, path)
    pages = {
        status: response
        for status, response in operation["responses"].items()
        if status.startswith("2") and "text/html" in response.get("content", {})
    }
    for status, response in operation["responses"].items():
        if status.startswith("4") or (status == "503" and path not in PUBLIC_PATHS):
            if "application/json" not in response["content"]:
                assert pages and set(response["content"]) == {"text/html"}, status
                continue
            media = response["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/ErrorDetail"}, status
            assert isinstance(media["example"]["detail"], str), status


def test_there_is_one_error_schema() -> None:
    schemas = SCHEMA["components"]["schemas"]
    detail_only = [
        name for name, schema in schemas.items() if set(schema.get("properties", {})) == {"detail"}
    ]
    assert detail_only == ["ErrorDetail"]
    assert schemas["ErrorDetail"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schemas


def test_with_keys_on_every_guarded_route_names_the_key_scheme() -> None:
    """Open paths (probes, docs, the console's pages) ask for nothing, badges take a key or none
    (a public monitor's), every other route asks for a key."""
    assert SCHEMA["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": SCHEMA["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for method, path, _ in OPERATIONS:
        security = operation_of(method, path).get("security")
        if is_open_path(path):
            assert security is None, (method, path)
        elif "/badge/" in path:
            assert security == [{"ApiKey": []}, {}], (method, path)
        else:
            assert security == [{"ApiKey": []}], (method, path)


def test_with_keys_off_no_route_asks_for_one() -> None:
    schema = create_app(Settings()).openapi()
    assert "securitySchemes" not in schema["components"]
    assert all(
        "401" not in op["responses"] for ops in schema["paths"].values() for op in ops.values()
    )


@pytest.mark.parametrize(
    "route", [route for route in ROUTES if route.body_field], ids=lambda route: route.path
)
def test_every_json_body_refuses_unknown_fields(route: Any) -> None:
    assert route.body_field is not None
    model = route.body_field.field_info.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        assert model.model_config.get("extra") == "forbid", f"{route.path}: {model.__name__}"


async def test_docs_pages_load_their_assets_from_the_service(app: RunningApp) -> None:
    for page in ("/docs", "/redoc"):
        html = (await app.client.get(page)).text
        assert "cdn" not in html and "https://" not in html, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = await app.client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200
        assert len(response.content) > 10_000


async def dom_after_scripts(url: str) -> str:
    """The page as headless Chromium shows it once its scripts ran, reaching only 127.0.0.1."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium not found: install Debian's chromium package")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *CHROMIUM_FLAGS,
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    dom, _ = await asyncio.wait_for(process.communicate(), 60)
    return dom.decode()


@pytest.mark.parametrize(("page", "rendered"), [("/docs", "opblock"), ("/redoc", "api-content")])
async def test_docs_render_in_a_browser_without_internet(
    settings: Settings, page: str, rendered: str
) -> None:
    keyed = settings.model_copy(update={"api_keys_enabled": True})
    async with serve_app(keyed) as running:
        dom = await dom_after_scripts(running.base_url + page)
    assert rendered in dom, f"{page} did not render"
    assert "/timer" in dom
    if page == "/docs":
        assert "authorize" in dom.lower()  # the API key scheme, for "Try it out"
