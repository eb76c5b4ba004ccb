"""The console's pages fuzzed from their OpenAPI description like the JSON routes: no input
gets a 500 or an answer the schema does not list."""

import asyncio

import schemathesis

from tests.fixtures.app import RunningApp
from tests.test_hostile_input import fuzz, guarded_app

__all__ = ["guarded_app"]

# Fewer cases than the JSON routes get: every form is refused at its CSRF check anyway, so
# more cases mostly repeat the same answer.
EXAMPLES_PER_PAGE = 10


async def test_fuzzing_every_console_route_finds_no_server_error_nor_undocumented_answer(
    guarded_app: RunningApp,
) -> None:
    raw = (await guarded_app.client.get("/openapi.json")).json()
    console_paths = [path for path in raw["paths"] if path == "/" or path.startswith("/console")]
    assert len(console_paths) >= 10, "the console's routes are in the schema"

    failures = await asyncio.to_thread(
        fuzz,
        schemathesis.openapi.from_dict(raw),
        guarded_app.base_url,
        console=True,
        examples=EXAMPLES_PER_PAGE,
    )

    assert failures == [], "\n\n".join(failures)
