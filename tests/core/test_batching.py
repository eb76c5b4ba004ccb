"""Group commit: one write per batch, each caller its own result or the batch's error."""

import asyncio

import pytest

from errands.core.batching import Batcher


class Table:
    """Stands for a database table: each write takes a moment, and is recorded."""

    def __init__(self, fail_first: int = 0) -> None:
        self.writes: list[list[int]] = []
        self.fail_first = fail_first

    async def write(self, batch: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        self.writes.append(batch)
        if len(self.writes) <= self.fail_first:
            raise RuntimeError("the database went away")
        return [item * 10 for item in batch]


async def test_callers_arriving_together_share_writes_and_get_their_own_results() -> None:
    table = Table()
    batcher = Batcher(table.write, name="test")

    results = await asyncio.gather(*(batcher.submit(n) for n in range(100)))

    assert results == [n * 10 for n in range(100)]
    assert sorted(item for batch in table.writes for item in batch) == list(range(100))
    assert len(table.writes) < 10, "callers that arrived during a write shared the next one"


async def test_linger_gathers_callers_that_arrive_close_together() -> None:
    table = Table()
    batcher = Batcher(table.write, name="test", linger_s=0.05)

    async def arrive_later(n: int) -> int:
        await asyncio.sleep(n * 0.001)
        return await batcher.submit(n)

    await asyncio.gather(*(arrive_later(n) for n in range(20)))
    assert table.writes == [list(range(20))]


async def test_a_failed_write_fails_its_callers_and_the_next_batch_goes_on() -> None:
    table = Table(fail_first=1)
    batcher = Batcher(table.write, name="test")

    first = asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True)
    await asyncio.sleep(0.001)  # the first write has started: these wait for the next one
    second = asyncio.gather(*(batcher.submit(n) for n in range(3, 6)))

    assert all(isinstance(result, RuntimeError) for result in await first)
    assert await second == [30, 40, 50]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    table = Table()
    batcher = Batcher(table.write, name="test")
    impatient = asyncio.create_task(batcher.submit(1))
    patient = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()

    assert await patient == 20
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_a_write_that_returns_the_wrong_number_of_results_fails_its_callers() -> None:
    async def write_losing_one(batch: list[int]) -> list[int]:
        return batch[1:]

    batcher = Batcher(write_losing_one, name="test")

    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True), 5
    )

    assert all(isinstance(result, RuntimeError) for result in results)
