"""A webhook receiver on 127.0.0.1 that records every delivery, and helpers to wait on timers."""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from errands.core.db import Pool


@dataclass(frozen=True)
class Delivery:
    timer_id: str
    headers: CIMultiDictProxy[str]
    body: bytes
    received_at: float  # time.time()


class Receiver:
    """Answers each request with the next status of `answers` (then 200), after `delay_s` and
    after awaiting `on_delivery(timer id)` when one is set."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answers: list[int] = []
        self.delay_s = 0.0
        self.on_delivery: Callable[[str], Awaitable[None]] | None = None
        self.port = 0
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def counts(self) -> Counter[str]:
        return Counter(delivery.timer_id for delivery in self.deliveries)

    async def wait_for_ids(self, count: int, timeout_s: float) -> None:
        """Wait until `count` distinct timer ids have arrived; fail the test after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while len(self.counts()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"received {len(self.counts())} of {count} timers in {timeout_s} s")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                continue

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        timer_id = request.headers["webhook-id"]  # a timer's webhook is its delivery
        self.deliveries.append(Delivery(timer_id, request.headers, body, time.time()))
        self._arrived.set()
        if self.on_delivery is not None:
            await self.on_delivery(timer_id)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


TIMER_STATE = """
    SELECT CASE status WHEN 'delivered' THEN 'fired' ELSE status END AS status,
           attempts, last_error, delivered_at AS fired_at
      FROM deliveries
     WHERE id = %s
"""


async def wait_for_status(
    pool: Pool, timer_id: str, statuses: set[str], timeout_s: float = 15.0
) -> dict[str, object]:
    """Poll the timer's row until its status is one of `statuses`; return the row."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(TIMER_STATE, (timer_id,))
            row = await cursor.fetchone()
        assert row is not None
        if row["status"] in statuses:
            return row
        if time.monotonic() > deadline:
            pytest.fail(f"timer {timer_id} still {row['status']} after {timeout_s} s: {row}")
        await asyncio.sleep(0.05)
