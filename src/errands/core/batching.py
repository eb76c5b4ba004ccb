"""Group commit, and grouped reads: many callers' rows written or read in one statement, each
caller told its own result."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Items submitted while a batch runs go into the next one, so the database sees one
    statement per batch however many callers arrive at once. `write` (or read) gets the batch
    and returns one result per item, in order; an error it raises is raised to every caller of
    the batch. `linger_s` waits that long before each batch, to gather callers that arrive close
    together. A batch starts after each of its items was submitted, so it sees every write
    committed before.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        name: str,
        linger_s: float = 0.0,
    ) -> None:
        self._write = write
        self._name = name
        self._linger_s = linger_s
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Return `item`'s result once the batch holding it is done."""
        result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, result))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting(), name=self._name)
        return await result

    async def _write_waiting(self) -> None:
        while self._waiting:
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            batch, self._waiting = self._waiting, []
            try:
                results = await self._write([item for item, _ in batch])
                if len(results) != len(batch):  # some callers would otherwise wait for ever
                    raise RuntimeError(
                        f"{self._name} wrote {len(batch)} items but returned {len(results)} results"
                    )
            except Exception as error:
                for _, waiter in batch:
                    if not waiter.done():  # a caller that was cancelled waits no more
                        waiter.set_exception(error)
                continue
            for (_, waiter), result in zip(batch, results, strict=True):
                if not waiter.done():
                    waiter.set_result(result)
