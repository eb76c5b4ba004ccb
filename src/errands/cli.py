"""The `errands` command: one codebase, one process role per subcommand."""

import asyncio
import signal
from collections.abc import Sequence
from typing import Annotated

import typer
import uvicorn

from errands.app import create_app
from errands.config import Settings, SettingsError, load_settings
from errands.core.db import apply_migrations, database_url
from errands.core.logging import configure_logging
from errands.core.resources import open_resources
from errands.loops import LOOPS, run_loops

__all__ = ["app"]

app = typer.Typer(help="Errands: titles, conversions, webhook timers and website monitors.")

API_ONLY: Sequence[str] = ()


def _settings() -> Settings:
    """Settings from the environment; an invalid value ends the command with one clear line."""
    try:
        settings = load_settings()
    except SettingsError as error:
        typer.echo(f"errands: {error}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    return settings


def _serve_http(settings: Settings, loops: Sequence[str]) -> None:
    config = uvicorn.Config(
        create_app(settings, loops=loops),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    uvicorn.Server(config).run()


@app.command()
def serve() -> None:
    """Everything in one process: the API and every background loop."""
    _serve_http(_settings(), loops=list(LOOPS))


@app.command()
def api() -> None:
    """The HTTP API only; run several behind a load balancer."""
    _serve_http(_settings(), loops=API_ONLY)


def _parse_loops(only: str | None, allowed: Sequence[str]) -> list[str]:
    if only is None:
        return list(allowed)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise typer.BadParameter(f"choose from {', '.join(allowed)}; got {only!r}")
    return names


async def _run_until_signal(settings: Settings, loops: Sequence[str]) -> None:
    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(signum, stop.set)
    async with open_resources(settings) as resources:
        await run_loops(resources, loops, stop)


@app.command()
def worker(
    only: Annotated[
        str | None, typer.Option(help="Comma-separated loops to run (default: all but the sink).")
    ] = None,
) -> None:
    """Background loops without the HTTP API."""
    settings = _settings()
    allowed = [name for name in LOOPS if name != "sink"]
    asyncio.run(_run_until_signal(settings, _parse_loops(only, allowed)))


@app.command()
def sink() -> None:
    """The Kafka consumer that writes check results to PostgreSQL."""
    asyncio.run(_run_until_signal(_settings(), ["sink"]))


@app.command()
def migrate() -> None:
    """Apply pending database migrations and exit."""
    settings = _settings()
    applied = asyncio.run(apply_migrations(database_url(settings)))
    typer.echo("\n".join(f"applied {name}" for name in applied) or "database is up to date")
