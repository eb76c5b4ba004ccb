"""The process-wide resources every feature uses, opened once and handed to routes and loops."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from fastapi import Request

from errands.config import Settings
from errands.core.bus import Bus, open_bus
from errands.core.db import Pool, apply_migrations, database_url, open_pool
from errands.core.http import GuardedClient
from errands.core.storage import LocalStorage, Storage

__all__ = ["Resources", "get_resources", "open_resources"]


@dataclass(frozen=True)
class Resources:
    settings: Settings
    database_url: str
    pool: Pool
    http: GuardedClient
    bus: Bus
    storage: Storage


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Start or reach PostgreSQL, migrate it, and open the pool, the HTTP client and the bus."""
    url = await asyncio.to_thread(database_url, settings)
    await apply_migrations(url)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(
                url,
                settings.db_pool_max,
                settings.db_pool_timeout_s,
                settings.db_statement_timeout_s,
            )
        )
        http = await stack.enter_async_context(GuardedClient.from_settings(settings))
        bus = await stack.enter_async_context(open_bus(settings))
        storage = LocalStorage.under_data_dir(settings.data_dir)
        yield Resources(
            settings=settings, database_url=url, pool=pool, http=http, bus=bus, storage=storage
        )


async def get_resources(request: Request) -> Resources:
    """FastAPI dependency: the resources the app's lifespan opened."""
    # async although it never awaits: FastAPI runs a plain `def` dependency in a worker thread,
    # which cost a third of the time of a POST /timer.
    resources: Resources = request.app.state.resources
    return resources
