"""Hostile input against the running app: schemathesis over every route of the OpenAPI schema
(no 500, answers as documented), oversized and malformed bodies, and traversal paths."""

import asyncio
import json
import re
from collections.abc import AsyncIterator

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from errands.config import Settings
from tests.fixtures.app import RunningApp, raw_request, serve_app

# Enough to try each route's edge cases in both modes while the whole run stays near a minute.
EXAMPLES_PER_OPERATION = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_JSON_BODY_BYTES = 64 * 1024


@pytest.fixture
async def guarded_app(settings: Settings) -> AsyncIterator[RunningApp]:
    """The API as deployed: private targets refused, so fuzzed URLs reach nothing local, and
    short outbound timeouts, so fuzzed public names cost little."""
    update = {
        "allow_private_targets": False,
        "max_json_body_bytes": MAX_JSON_BODY_BYTES,
        "http_timeout_s": 1.0,
        "titles_timeout_s": 1.0,
    }
    async with serve_app(settings.model_copy(update=update)) as running:
        yield running


def fuzz(
    schema: schemathesis.BaseSchema,
    base_url: str,
    *,
    console: bool = False,
    examples: int = EXAMPLES_PER_OPERATION,
) -> list[str]:
    """Run every operation in positive and negative mode; one line per operation that failed.
    The console's HTML pages (tag `console`) are fuzzed on their own, by tests/console."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if ("console" in (operation.tags or [])) != console:
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def call_and_check(case: schemathesis.Case) -> None:
                # A connection of its own per case: a case the server refuses at the protocol
                # level closes its connection, which must not fail the next case.
                case.call_and_validate(base_url=base_url, checks=CHECKS)

            try:
                call_and_check()
            except hypothesis.errors.Unsatisfiable:
                continue  # an operation without parameters has no invalid input to send
            # Schemathesis reports check failures as a BaseExceptionGroup; errors of the test
            # itself are Exceptions. Both are collected so every operation's result shows.
            except (Exception, BaseExceptionGroup) as error:
                failures.append(f"{operation.label} ({mode.value}): {_describe(error)}")
    return failures


def _describe(error: BaseException) -> str:
    """The error with every error it groups, so a report shows what actually failed."""
    if isinstance(error, BaseExceptionGroup):
        inner = "; ".join(_describe(each) for each in error.exceptions)
        return f"{error.message}: [{inner}]"
    return f"{type(error).__name__}: {error}"


# Every route and its documented examples, in two modes: longer than the default limit on a
# loaded machine.
@pytest.mark.timeout(600)
async def test_fuzzing_every_route_finds_no_server_error_nor_undocumented_answer(
    guarded_app: RunningApp,
) -> None:
    raw = (await guarded_app.client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(raw)
    assert len(raw["paths"]) >= 3, "the features' routes are in the schema"

    failures = await asyncio.to_thread(fuzz, schema, guarded_app.base_url)

    assert failures == [], "\n\n".join(failures)


def json_routes(schema: dict[str, object]) -> list[tuple[str, str]]:
    """(method, path) of every operation taking a JSON body, path parameters filled in."""
    found = []
    paths = schema["paths"]
    assert isinstance(paths, dict)
    for path, methods in paths.items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {})
            if "application/json" in body:
                concrete = path
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "path":
                        concrete = concrete.replace(
                            "{" + parameter["name"] + "}", "00000000-0000-0000-0000-000000000000"
                        )
                found.append((method.upper(), concrete))
    return found


async def test_an_oversized_json_body_gets_413_on_every_json_route(
    guarded_app: RunningApp,
) -> None:
    routes = json_routes((await guarded_app.client.get("/openapi.json")).json())
    assert routes, "some routes take JSON"
    oversized = json.dumps({"domains": ["a.example"] * MAX_JSON_BODY_BYTES}).encode()

    for method, path in routes:
        declared = await guarded_app.client.request(
            method, path, content=oversized, headers={"Content-Type": "application/json"}
        )
        streamed = await guarded_app.client.request(
            method, path, content=chunks(oversized), headers={"Content-Type": "application/json"}
        )

        for response in (declared, streamed):
            assert response.status_code == 413, (method, path, response.text)
            assert "byte limit" in response.json()["detail"]


async def test_a_multipart_content_type_does_not_lift_the_cap_on_json_routes(
    guarded_app: RunningApp,
) -> None:
    routes = json_routes((await guarded_app.client.get("/openapi.json")).json())
    oversized = json.dumps({"domains": ["a.example"] * MAX_JSON_BODY_BYTES}).encode()
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}

    for method, path in routes:
        response = await guarded_app.client.request(
            method, path, content=chunks(oversized), headers=multipart
        )

        assert response.status_code == 413, (method, path, response.text[:200])


async def chunks(body: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    """The body without a Content-Length, as a chunked upload sends it."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize(
    "body", [b"{", b'{"domains": [', b"[]", b"null", b'"text"', b"{}" * 1000, b"", b"\x00"]
)
async def test_malformed_json_gets_422_on_every_json_route(
    guarded_app: RunningApp, body: bytes
) -> None:
    routes = json_routes((await guarded_app.client.get("/openapi.json")).json())

    for method, path in routes:
        response = await guarded_app.client.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )

        assert response.status_code in (404, 422), (method, path, body, response.text)
        assert "detail" in response.json()


async def test_a_body_that_is_not_utf8_gets_a_4xx_on_every_json_route(
    guarded_app: RunningApp,
) -> None:
    routes = json_routes((await guarded_app.client.get("/openapi.json")).json())

    for method, path in routes:
        response = await guarded_app.client.request(
            method, path, content=b"\xff\xfe{\x00", headers={"Content-Type": "application/json"}
        )

        assert response.status_code in (400, 404, 422), (method, path, response.text)
        assert response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b'{"url": "http://example.com/\\u0000", "domains": ["a\\u0000.com"]}', "NUL"),
        (b'{"url": "http://example.com/\\ud800", "domains": ["\\udc00.com"]}', "surrogates"),
        (b'{"\\ud800": 1}', "surrogates"),
        # Numbers too large for a float once made the 422 that echoed them fail as a 500.
        (b'{"interval_s": 1e400, "hours": 1e400, "domains": [1e400]}', '{"detail":"'),
    ],
)
async def test_json_the_database_cannot_store_gets_422_on_every_json_route(
    guarded_app: RunningApp, body: bytes, complaint: str
) -> None:
    """Legal JSON, but text PostgreSQL cannot hold or numbers too large to echo back."""
    routes = json_routes((await guarded_app.client.get("/openapi.json")).json())

    for method, path in routes:
        response = await guarded_app.client.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )

        assert response.status_code in (404, 422), (method, path, body, response.text)
        if response.status_code == 422:
            assert re.search(complaint, response.text), (method, path, response.text)


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret.txt",
        "/files/../../secret.txt",
        "/files/..%2fsecret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2e%2e%2fsecret.txt",
        "/files/....//secret.txt",
        "/files/.partial/../../secret.txt",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/..%5csecret.txt",
        "/files/secret.txt%00.png",
        "/files/../../../../../../etc/passwd",
        "/uploads/..%2f..%2fsecret.txt/originals",
    ],
)
async def test_traversal_paths_reach_nothing_outside_the_files(
    guarded_app: RunningApp, settings: Settings, path: str
) -> None:
    (settings.data_dir / "secret.txt").write_text("TOP SECRET")

    status, body = await raw_request(guarded_app.base_url, "GET", path)

    assert status in (400, 404, 422), (status, body)
    assert b"TOP SECRET" not in body
    assert b"root:" not in body
