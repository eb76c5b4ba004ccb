"""A rolling deploy of the running compose stack (deploy/scripts/rollout.sh) under steady mixed
traffic through HAProxy: timers, reads and titles from a local site. Started by
`make stack-test` after tests/test_stack.py, with a new image tagged in place; it prints the
figures docs/operations.md quotes. Skipped without that stack.
"""

import asyncio
import collections
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from aiohttp import web

from tests.test_stack import DATABASE, LB, SITE, checks_on_the_topic

ROLLOUT = Path(__file__).resolve().parent.parent / "deploy" / "scripts" / "rollout.sh"
RECEIVER_PORT = 18481
CLIENTS = 4
PAUSE_BETWEEN_REQUESTS_S = 0.05
TIMER_S = 2

pytestmark = pytest.mark.skipif(
    "ERRANDS_TEST_STACK_COMPOSE" not in os.environ,
    reason="needs the stack `make stack-test` starts",
)


@dataclass
class Traffic:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    longest_s: float = 0.0
    timers: set[str] = field(default_factory=set)


@pytest.fixture
async def webhooks() -> AsyncIterator[collections.Counter[str]]:
    """How many times each timer id reached a receiver on 127.0.0.1."""
    received: collections.Counter[str] = collections.Counter()

    async def receive(request: web.Request) -> web.Response:
        received[(await request.json())["id"]] += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", RECEIVER_PORT).start()
    try:
        yield received
    finally:
        await runner.cleanup()


async def send_traffic(
    client: httpx.AsyncClient, monitor_id: str, traffic: Traffic, stop: asyncio.Event
) -> None:
    """One client's loop: a timer, a read of it, a title, a read of checks; every answer checked."""
    hook = f"http://127.0.0.1:{RECEIVER_PORT}/hook"
    timer_id = None
    step = 0
    while not stop.is_set():
        if step % 4 == 0:
            request = client.build_request("POST", "/timer", json={"seconds": TIMER_S, "url": hook})
        elif step % 4 == 1 and timer_id:
            request = client.build_request("GET", f"/timer/{timer_id}")
        elif step % 4 == 2:
            request = client.build_request("POST", "/titles", json={"domains": [SITE]})
        else:
            request = client.build_request("GET", f"/monitors/{monitor_id}/checks?limit=5")
        step += 1
        started = time.monotonic()
        try:
            response = await client.send(request)
        except httpx.HTTPError as error:
            traffic.failures.append(f"{request.method} {request.url.path}: {error!r}")
        else:
            if response.status_code not in (200, 201):
                traffic.failures.append(
                    f"{request.method} {request.url.path}: {response.status_code}"
                )
            elif request.url.path == "/timer":
                timer_id = response.json()["id"]
                traffic.timers.add(timer_id)
        traffic.requests += 1
        traffic.longest_s = max(traffic.longest_s, time.monotonic() - started)
        await asyncio.sleep(PAUSE_BETWEEN_REQUESTS_S)


async def settle(done: Callable[[], bool], within_s: int) -> None:
    """Give the stack up to `within_s` to catch up; the assertions then say what it missed."""
    for _ in range(within_s):
        if done():
            return
        await asyncio.sleep(1)


def stored_checks(monitor_id: str) -> collections.Counter[str]:
    with psycopg.connect(DATABASE) as conn:
        rows = conn.execute("SELECT check_id FROM checks WHERE monitor_id = %s", [monitor_id])
        return collections.Counter(str(check_id) for (check_id,) in rows.fetchall())


@pytest.mark.timeout(900)
async def test_a_rolling_deploy_under_load_fails_loses_and_repeats_nothing(
    webhooks: collections.Counter[str],
) -> None:
    headers = {"Authorization": f"Bearer {os.environ['ERRANDS_TEST_STACK_KEY']}"}
    async with httpx.AsyncClient(base_url=LB, headers=headers, timeout=30) as client:
        page = f"{SITE}index.html"  # a monitor of its own (one per URL)
        created = await client.post("/monitors", json={"url": page, "interval_s": 5})
        assert created.status_code == 201, created.text
        monitor_id = created.json()["id"]
        traffic, stop = Traffic(), asyncio.Event()
        clients = [
            asyncio.create_task(send_traffic(client, monitor_id, traffic, stop))
            for _ in range(CLIENTS)
        ]
        await asyncio.sleep(5)
        started = time.monotonic()
        rollout = await asyncio.to_thread(
            subprocess.run,
            [str(ROLLOUT)],
            env={**os.environ, "COMPOSE": os.environ["ERRANDS_TEST_STACK_COMPOSE"]},
            timeout=600,
        )
        rolled_s = time.monotonic() - started
        await asyncio.sleep(5)
        stop.set()
        await asyncio.gather(*clients)

        await settle(lambda: traffic.timers <= set(webhooks), within_s=60)
        await asyncio.sleep(2 * TIMER_S)  # time for a repeat to show
        published = await checks_on_the_topic(monitor_id)
        await settle(lambda: published <= set(stored_checks(monitor_id)), within_s=30)
        stored = stored_checks(monitor_id)

    lost_webhooks = traffic.timers - set(webhooks)
    repeated_webhooks = sum(count - 1 for count in webhooks.values())
    lost_checks = published - set(stored)
    repeated_checks = sum(count - 1 for count in stored.values())
    print(
        f"\nrolling deploy: {rolled_s:.0f} s (api-1, api-2, worker, sink replaced)\n"
        f"requests {traffic.requests}, failed {len(traffic.failures)}, "
        f"longest request {traffic.longest_s * 1000:.0f} ms\n"
        f"timers {len(traffic.timers)}, webhooks lost {len(lost_webhooks)}, "
        f"repeated {repeated_webhooks}\n"
        f"checks published {len(published)}, stored {len(stored)}, lost {len(lost_checks)}, "
        f"repeated {repeated_checks}"
    )
    assert rollout.returncode == 0
    assert traffic.failures == []
    assert lost_webhooks == set() and repeated_webhooks == 0
    assert len(published) >= 10, "the monitor was checked all along"
    assert lost_checks == set() and repeated_checks == 0
