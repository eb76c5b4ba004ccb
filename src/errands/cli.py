"""The `errands` command: one codebase, one process role per subcommand."""

import asyncio
import math
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from pathlib import Path
from types import FrameType
from typing import Annotated, TypeVar

import psycopg
import typer
import uvicorn
import uvloop
from fastapi import FastAPI
from psycopg.rows import dict_row

from errands.app import create_app
from errands.config import Settings, SettingsError, load_settings
from errands.core import auth
from errands.core.db import apply_migrations, database_url
from errands.core.errors import Unprocessable
from errands.core.http import GuardedClient
from errands.core.logging import configure_logging
from errands.core.metrics import serve_metrics
from errands.core.resources import open_resources
from errands.core.server import guarded_http_protocol
from errands.loops import LOOPS, run_loops
from errands.monitors.sync import SitesFileError, read_sites, sync_sites
from errands.titles.api import TitlesResponse, titles_response

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


class DrainingServer(uvicorn.Server):
    """uvicorn that, on SIGTERM, first reports not ready for `drain_s` while still serving, so
    a load balancer stops sending traffic before the listener closes; then it stops as usual:
    in-flight requests finish (within the graceful timeout) and the lifespan stops the loops.

    A SIGTERM-initiated stop exits with status 0. A second signal stops at once: requests in
    flight are dropped and leases are left to expire.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.draining = True
        if self.drain_until is None and not self.should_exit:
            if sig == signal.SIGTERM:
                # Not recorded in uvicorn's captured signals, which it re-raises after stopping.
                self.drain_until = time.monotonic() + self.drain_s
                return
        else:
            # uvicorn itself forces only on a second SIGINT.
            self.force_exit = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


def http_server(settings: Settings, loops: Sequence[str]) -> DrainingServer:
    application = create_app(settings, loops=loops)
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guarded_http_protocol(
            header_timeout_s=settings.server_header_timeout_s,
            body_idle_timeout_s=settings.server_body_idle_timeout_s,
            max_connections=settings.server_max_connections,
        ),
        log_config=None,
        access_log=False,
        # uvicorn takes whole seconds; rounding down would cut requests short (0.5 s would be none).
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )
    return DrainingServer(config, application, settings.shutdown_drain_s)


@app.command()
def serve() -> None:
    """Everything in one process: the API and every background loop."""
    http_server(_settings(), loops=list(LOOPS)).run()


@app.command()
def api() -> None:
    """The HTTP API only; run several behind a load balancer."""
    http_server(_settings(), loops=API_ONLY).run()


def pick(text: str, allowed: Sequence[str]) -> list[str]:
    """The names in comma-separated `text`, each once, all of them from `allowed`."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names or not set(names) <= set(allowed):
        raise typer.BadParameter(f"choose from {', '.join(allowed)}; got {text!r}")
    return names


async def _run_until_signal(settings: Settings, loops: Sequence[str]) -> None:
    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(signum, stop.set)
    serve_metrics(settings.host, settings.metrics_port)
    async with open_resources(settings) as resources:
        await run_loops(resources, loops, stop)


WORKER_LOOPS = [name for name in LOOPS if name != "sink"]


def worker_loops(only: str | None, *, kafka: bool) -> list[str]:
    """The loops chosen (all by default), the deliveries beside the timers (which send their
    webhooks through them), and the sink beside the monitors when there is no Kafka: their check
    results then reach no other process, and would pile up unstored."""
    loops = WORKER_LOOPS if only is None else pick(only, WORKER_LOOPS)
    if "timers" in loops and "deliveries" not in loops:
        loops = [*loops, "deliveries"]
    return [*loops, "sink"] if "monitors" in loops and not kafka else loops


@app.command()
def worker(
    only: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated, from {', '.join(WORKER_LOOPS)} (default: all). Without "
            "Kafka, monitors run with the sink that stores their results."
        ),
    ] = None,
) -> None:
    """Background loops without the HTTP API."""
    settings = _settings()
    kafka = settings.kafka_bootstrap_servers is not None
    uvloop.run(_run_until_signal(settings, worker_loops(only, kafka=kafka)))


@app.command()
def sink() -> None:
    """The Kafka consumer that writes check results to PostgreSQL."""
    settings = _settings()
    if settings.kafka_bootstrap_servers is None:
        # Without Kafka nothing would ever reach this process: serve and worker run the sink.
        typer.echo(
            "errands: the sink reads from Kafka: set ERRANDS_KAFKA_BOOTSTRAP_SERVERS "
            "(without Kafka, serve and worker store check results themselves)",
            err=True,
        )
        raise typer.Exit(2)
    uvloop.run(_run_until_signal(settings, ["sink"]))


@app.command()
def migrate() -> None:
    """Apply pending database migrations and exit. With API keys on, a database that never had a
    key gets an admin key, printed this once."""
    settings = _settings()
    applied = asyncio.run(apply_migrations(database_url(settings)))
    typer.echo("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    if settings.api_keys_enabled:
        made = asyncio.run(_with_connection(settings, auth.create_bootstrap_key))
        if made is not None:
            key, secret = made
            typer.echo(f"bootstrap API key {key.id} (admin scope, shown only this once): {secret}")
            typer.echo(f"once narrower keys exist: errands keys revoke {key.id}")


keys = typer.Typer(help="API keys, checked when ERRANDS_API_KEYS_ENABLED=true.")
app.add_typer(keys, name="keys")


Result = TypeVar("Result")


async def _with_connection(
    settings: Settings, work: Callable[[auth.Connection], Awaitable[Result]]
) -> Result:
    """Run `work` on a connection to the migrated database (the embedded one when no URL)."""
    url = await asyncio.to_thread(database_url, settings)
    await apply_migrations(url)
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row
    ) as conn:
        return await work(conn)


@keys.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scopes: Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join(auth.SCOPES)}.")],
) -> None:
    """Create a key and print it; it is shown only this once."""
    wanted = pick(scopes, auth.SCOPES)
    if not 1 <= len(name) <= 100:
        raise typer.BadParameter("the name must have 1 to 100 characters", param_hint="--name")
    key, secret = asyncio.run(
        _with_connection(_settings(), lambda conn: auth.create_key(conn, name, wanted))
    )
    typer.echo(f"id:     {key.id}\nname:   {key.name}\nscopes: {','.join(key.scopes)}")
    typer.echo(f"key:    {secret}\n(store it now: only its hash is kept)")


@keys.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The id printed by create/list.")],
) -> None:
    """Revoke a key; requests with it are refused within ERRANDS_API_KEY_CACHE_S seconds."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise typer.BadParameter(f"not a key id: {key_id!r}", param_hint="KEY_ID") from None
    key = asyncio.run(_with_connection(_settings(), lambda conn: auth.revoke_key(conn, parsed)))
    if key is None:
        typer.echo(f"errands: no API key has the id {key_id}", err=True)
        raise typer.Exit(1)
    assert key.revoked_at is not None
    revoked_at = key.revoked_at.astimezone(UTC)  # PostgreSQL answers in the session's zone
    typer.echo(f"revoked {key.id} ({key.name}) at {revoked_at:%Y-%m-%d %H:%M:%S} UTC")


@keys.command("list")
def list_keys() -> None:
    """Every key, revoked ones included, without the keys themselves."""
    found = asyncio.run(_with_connection(_settings(), auth.list_keys))
    if not found:
        typer.echo("no API keys")
        return
    typer.echo(f"{'id':36}  {'prefix':14}  {'status':10}  {'scopes':40}  name")
    for key in found:
        status = "revoked" if key.revoked_at else "active"
        scopes_text = ",".join(key.scopes)
        typer.echo(f"{key.id!s:36}  {key.prefix:14}  {status:10}  {scopes_text:40}  {key.name}")


async def _fetch_titles(settings: Settings, domains: list[str]) -> TitlesResponse:
    async with GuardedClient.from_settings(settings) as client:
        return await titles_response(client, settings, domains)


@app.command()
def titles(
    domains: Annotated[list[str], typer.Argument(help="Domains (https, then http) or URLs.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")] = False,
) -> None:
    """Print each domain's page title, one per line; exit 1 if any failed or timed out."""
    settings = _settings()
    try:
        answer = asyncio.run(_fetch_titles(settings, domains))
    except Unprocessable as error:
        typer.echo(f"errands: {error.detail}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    else:
        for result in answer.results:
            shown = result.title if result.title is not None else f"[{result.status}]"
            reason = f" ({result.error})" if result.error else ""
            typer.echo(f"{result.domain}\t{shown}{reason}")
    if any(result.status in ("timeout", "error") for result in answer.results):
        raise typer.Exit(1)


monitors = typer.Typer(help="Website monitors.")
app.add_typer(monitors, name="monitors")


async def _sync_monitors(settings: Settings, path: Path) -> list[tuple[str, str]]:
    sites = read_sites(path)
    async with open_resources(settings) as resources:
        return await sync_sites(resources, sites)


@monitors.command("sync")
def sync_monitors(
    file: Annotated[Path, typer.Argument(help="YAML (.yaml/.yml) or TOML (.toml) list of sites.")],
) -> None:
    """Create or update a monitor per site in FILE (matched by URL); print what changed."""
    settings = _settings()
    try:
        outcomes = asyncio.run(_sync_monitors(settings, file))
    except SitesFileError as error:
        typer.echo(f"errands: {error}", err=True)
        raise typer.Exit(2) from None
    for outcome, url in outcomes:
        typer.echo(f"{outcome:9}  {url}")
    changed = sum(1 for outcome, _ in outcomes if outcome != "unchanged")
    typer.echo(f"{changed} of {len(outcomes)} monitors changed")
