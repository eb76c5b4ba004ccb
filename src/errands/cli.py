"""The `errands` command: one codebase, one process role per subcommand."""

import asyncio
import dataclasses
import json
import math
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import psycopg
import typer
import uvicorn
import uvloop
from fastapi import FastAPI
from psycopg.rows import dict_row
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from errands.core.storage import StorageUnavailable, open_storage
from errands.loops import LOOPS, run_loops
from errands.monitors.sync import SitesFileError, read_sites, sync_sites
from errands.service_client import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ServiceClient,
    ServiceError,
)
from errands.titles.api import TitlesResponse, titles_response

__all__ = ["app"]

app = typer.Typer(
    help="Errands: titles, conversions, webhook timers and website monitors.\n\n"
    "Exit codes: 0 done; 1 refused by the service, not found, or the work failed; 2 a bad "
    "command line, setting or file; 3 the service or its database cannot be reached.",
    no_args_is_help=True,
)

API_ONLY: Sequence[str] = ()
JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]


@dataclasses.dataclass
class ServiceTarget:
    url: str | None
    api_key: str | None


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"errands {version('errands')}")
        raise typer.Exit()


@app.callback()
def main(
    context: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The running service that timers, uploads and monitors commands call "
            "(default: ERRANDS_API_URL).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="API key those commands send (default: ERRANDS_API_KEY)."),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    context.obj = ServiceTarget(url, api_key)


def _settings() -> Settings:
    """Settings from the environment; an invalid value ends the command with one clear line."""
    try:
        settings = load_settings()
    except SettingsError as error:
        typer.echo(f"errands: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    configure_logging(settings.log_level, settings.log_format)
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


def _check_storage(settings: Settings) -> None:
    """A bucket that is missing, out of reach or refuses the credentials ends the command with
    one clear line, before anything starts."""

    async def probe() -> None:
        async with open_storage(settings):
            pass

    try:
        asyncio.run(probe())
    except StorageUnavailable as error:
        typer.echo(f"errands: storage {settings.storage_url}: {error.detail}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def http_server(settings: Settings, loops: Sequence[str]) -> DrainingServer:
    _check_storage(settings)
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
    _check_storage(settings)
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
        raise typer.Exit(EXIT_USAGE)
    uvloop.run(_run_until_signal(settings, ["sink"]))


@app.command()
def migrate(as_json: JsonOption = False) -> None:
    """Apply pending database migrations and exit. With API keys on, a database that never had a
    key gets an admin key, printed this once."""
    settings = _settings()
    try:
        applied = asyncio.run(apply_migrations(database_url(settings)))
    except psycopg.OperationalError as error:
        raise _database_unreachable(error) from None
    made = None
    if settings.api_keys_enabled:
        made = _with_connection(settings, auth.create_bootstrap_key)
    if as_json:
        bootstrap = None if made is None else {"id": str(made[0].id), "key": made[1]}
        _print_json({"applied": applied, "bootstrap_key": bootstrap})
        return
    typer.echo("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    if made is not None:
        key, secret = made
        typer.echo(f"bootstrap API key {key.id} (admin scope, shown only this once): {secret}")
        typer.echo(f"once narrower keys exist: errands keys revoke {key.id}")


keys = typer.Typer(help="API keys, checked when ERRANDS_API_KEYS_ENABLED=true.")
app.add_typer(keys, name="keys")


Result = TypeVar("Result")


def _with_connection(
    settings: Settings, work: Callable[[auth.Connection], Awaitable[Result]]
) -> Result:
    """Run `work` on a connection to the migrated database (the embedded one when no URL); a
    database out of reach ends the command with one line."""

    async def connected() -> Result:
        url = await asyncio.to_thread(database_url, settings)
        await apply_migrations(url)
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row
        ) as conn:
            return await work(conn)

    try:
        return asyncio.run(connected())
    except psycopg.OperationalError as error:
        raise _database_unreachable(error) from None


def _database_unreachable(error: psycopg.OperationalError) -> typer.Exit:
    """Say in one line why the database could not be reached; the exit to raise."""
    typer.echo(f"errands: cannot reach the database: {' '.join(str(error).split())}", err=True)
    return typer.Exit(EXIT_UNREACHABLE)


@keys.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scopes: Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join(auth.SCOPES)}.")],
    as_json: JsonOption = False,
) -> None:
    """Create a key and print it; it is shown only this once."""
    wanted = pick(scopes, auth.SCOPES)
    if not 1 <= len(name) <= 100:
        raise typer.BadParameter("the name must have 1 to 100 characters", param_hint="--name")
    key, secret = _with_connection(_settings(), lambda conn: auth.create_key(conn, name, wanted))
    if as_json:
        _print_json({**dataclasses.asdict(key), "key": secret})
        return
    typer.echo(f"id:     {key.id}\nname:   {key.name}\nscopes: {','.join(key.scopes)}")
    typer.echo(f"key:    {secret}\n(store it now: only its hash is kept)")


@keys.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The id printed by create/list.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key; requests with it are refused within ERRANDS_API_KEY_CACHE_S seconds."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise typer.BadParameter(f"not a key id: {key_id!r}", param_hint="KEY_ID") from None
    key = _with_connection(_settings(), lambda conn: auth.revoke_key(conn, parsed))
    if key is None:
        typer.echo(f"errands: no API key has the id {key_id}", err=True)
        raise typer.Exit(EXIT_FAILED)
    assert key.revoked_at is not None
    if as_json:
        _print_json(dataclasses.asdict(key))
        return
    revoked_at = key.revoked_at.astimezone(UTC)  # PostgreSQL answers in the session's zone
    typer.echo(f"revoked {key.id} ({key.name}) at {revoked_at:%Y-%m-%d %H:%M:%S} UTC")


@keys.command("list")
def list_keys(as_json: JsonOption = False) -> None:
    """Every key, revoked ones included, without the keys themselves."""
    found = _with_connection(_settings(), auth.list_keys)
    if as_json:
        _print_json([dataclasses.asdict(key) for key in found])
    elif not found:
        typer.echo("no API keys")
    else:
        _print_table(
            ["id", "prefix", "status", "scopes", "name"],
            [
                [
                    key.id,
                    key.prefix,
                    "revoked" if key.revoked_at else "active",
                    ",".join(key.scopes),
                    key.name,
                ]
                for key in found
            ],
        )


async def _fetch_titles(settings: Settings, domains: list[str]) -> TitlesResponse:
    async with GuardedClient.from_settings(settings) as client:
        return await titles_response(client, settings, domains)


@app.command()
def titles(
    domains: Annotated[list[str], typer.Argument(help="Domains (https, then http) or URLs.")],
    as_json: JsonOption = False,
) -> None:
    """Print each domain's page title, one per line; exit 1 if any failed or timed out."""
    settings = _settings()
    try:
        answer = asyncio.run(_fetch_titles(settings, domains))
    except Unprocessable as error:
        typer.echo(f"errands: {error.detail}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
    else:
        for result in answer.results:
            shown = result.title if result.title is not None else f"[{result.status}]"
            reason = f" ({result.error})" if result.error else ""
            typer.echo(f"{result.domain}\t{shown}{reason}")
    if any(result.status in ("timeout", "error") for result in answer.results):
        raise typer.Exit(EXIT_FAILED)


monitors = typer.Typer(help="Website monitors.")
app.add_typer(monitors, name="monitors")


async def _sync_monitors(
    settings: Settings, path: Path, *, dry_run: bool, prune: bool
) -> list[tuple[str, str]]:
    sites = read_sites(path)
    async with open_resources(settings) as resources:
        return await sync_sites(resources, sites, dry_run=dry_run, prune=prune)


@monitors.command("sync")
def sync_monitors(
    file: Annotated[Path, typer.Argument(help="YAML (.yaml/.yml) or TOML (.toml) list of sites.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; change nothing.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Also delete the monitors FILE does not list.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create or update a monitor per site in FILE (matched by URL); print what changed.

    Works on the database directly (ERRANDS_DATABASE_URL), so it also runs before any service."""
    settings = _settings()
    try:
        outcomes = asyncio.run(_sync_monitors(settings, file, dry_run=dry_run, prune=prune))
    except SitesFileError as error:
        typer.echo(f"errands: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except psycopg.OperationalError as error:
        raise _database_unreachable(error) from None
    if as_json:
        _print_json(
            {"dry_run": dry_run, "monitors": [{"outcome": o, "url": u} for o, u in outcomes]}
        )
        return
    for outcome, url in outcomes:
        typer.echo(f"{outcome:9}  {url}")
    changed = sum(1 for outcome, _ in outcomes if outcome != "unchanged")
    verb = "would change (dry run: nothing was written)" if dry_run else "changed"
    typer.echo(f"{changed} of {len(outcomes)} monitors {verb}")


# --- output ---------------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _console(*, stderr: bool = False) -> Console:
    """A terminal's own width, or room for whole ids and URLs when the output is a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 200)


def _print_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    table = Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    _print_lines(table)


def _print_record(record: dict[str, Any], fields: Sequence[str]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    for name in fields:
        value = record.get(name)
        table.add_row(name, "" if value is None else str(value))
    _print_lines(table)


def _print_lines(table: Table) -> None:
    """The table without the spaces that pad its lines to the widest, so output greps cleanly."""
    console = _console()
    with console.capture() as captured:
        console.print(table)
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


# --- commands that call a running service ---------------------------------------------------


def _call(context: typer.Context, request: Callable[[ServiceClient], Result]) -> Result:
    """Send `request` to the service named by --url/--api-key or the settings; a failure ends
    the command with one line and its exit code."""
    settings = _settings()
    target: ServiceTarget = context.obj
    client = ServiceClient(target.url or settings.api_url, target.api_key or settings.api_key)
    try:
        return request(client)
    except ServiceError as error:
        typer.echo(f"errands: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    finally:
        client.close()


IdArgument = Annotated[str, typer.Argument(help="The id the service gave.")]


def _id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise typer.BadParameter(f"not an id: {text!r}", param_hint="ID") from None


timers = typer.Typer(help="Webhook timers on a running service.", no_args_is_help=True)
app.add_typer(timers, name="timers")

TIMER_FIELDS = ["id", "status", "time_left", "fire_at", "url", "attempts", "fired_at", "last_error"]


@timers.command("create")
def create_timer(
    context: typer.Context,
    url: Annotated[str, typer.Argument(help="Where the webhook is POSTed when the timer ends.")],
    hours: Annotated[int, typer.Option(min=0)] = 0,
    minutes: Annotated[int, typer.Option(min=0)] = 0,
    seconds: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Set a timer: after HOURS, MINUTES and SECONDS, URL gets `POST {"id": "<timer id>"}`."""
    body = {"hours": hours, "minutes": minutes, "seconds": seconds, "url": url}
    created = _call(context, lambda client: client.post("/timer", body))
    if as_json:
        _print_json(created)
    else:
        typer.echo(f"timer {created['id']} fires in {created['time_left']} s")


@timers.command("get")
def get_timer(context: typer.Context, timer_id: IdArgument, as_json: JsonOption = False) -> None:
    """A timer's status, seconds left and how its webhook went."""
    timer = _call(context, lambda client: client.get(f"/timer/{_id(timer_id)}"))
    if as_json:
        _print_json(timer)
    else:
        _print_record(timer, TIMER_FIELDS)


@timers.command("list")
def list_timers(
    context: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only pending, firing, fired, failed or cancelled ones.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Timers per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="The next page, as printed.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Timers, newest first, a page at a time."""
    page = _call(
        context, lambda client: client.get("/timers", status=status, limit=limit, cursor=cursor)
    )
    if as_json:
        _print_json(page)
        return
    _print_table(
        ["id", "status", "time_left", "fire_at", "url"],
        [
            [timer[name] for name in ("id", "status", "time_left", "fire_at", "url")]
            for timer in page["timers"]
        ],
    )
    if page.get("next_cursor"):
        typer.echo(f"more: errands timers list --cursor {page['next_cursor']}")


@timers.command("cancel")
def cancel_timer(context: typer.Context, timer_id: IdArgument, as_json: JsonOption = False) -> None:
    """Cancel a pending timer so its webhook is never sent."""
    timer = _call(context, lambda client: client.delete(f"/timer/{_id(timer_id)}"))
    if as_json:
        _print_json(timer)
    else:
        typer.echo(f"timer {timer['id']} cancelled")


uploads = typer.Typer(help="Uploads converted to PNG by a running service.", no_args_is_help=True)
app.add_typer(uploads, name="uploads")

UPLOAD_POLL_INTERVAL_S = 0.5


@uploads.command("add")
def add_upload(
    context: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="PDF, PNG or JPEG files.")],
    as_json: JsonOption = False,
) -> None:
    """Upload FILES in one upload; print its id (then `errands uploads wait ID`)."""
    created = _call(context, lambda client: client.upload(files))
    if as_json:
        _print_json(created)
    else:
        typer.echo(f"upload {created['id']} {created['status']} ({len(files)} files)")


def _print_upload(upload: dict[str, Any]) -> None:
    typer.echo(f"upload {upload['id']}: {upload['status']}")
    _print_table(
        ["file", "type", "status", "images", "error"],
        [
            [
                file["filename"],
                file["type"],
                file["status"],
                ", ".join(
                    f"{image['path']} ({image['width']}x{image['height']})"
                    for image in file["images"]
                ),
                file["error"],
            ]
            for file in upload["files"]
        ],
    )


@uploads.command("get")
def get_upload(context: typer.Context, upload_id: IdArgument, as_json: JsonOption = False) -> None:
    """An upload's files, each with its status and PNG paths."""
    upload = _call(context, lambda client: client.get(f"/uploads/{_id(upload_id)}"))
    if as_json:
        _print_json(upload)
    else:
        _print_upload(upload)


@uploads.command("wait")
def wait_for_upload(
    context: typer.Context,
    upload_id: IdArgument,
    timeout_s: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait.")] = 600,
    as_json: JsonOption = False,
) -> None:
    """Wait, with a progress bar, until every file is converted or failed.

    Exits 1 if a file failed or time ran out."""
    path = f"/uploads/{_id(upload_id)}"

    def wait(client: ServiceClient) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        bar = Progress(
            TextColumn("converting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            disable=as_json,
            transient=True,
        )
        with bar:
            task = bar.add_task("files", total=None)
            while True:
                status = client.get(f"{path}/status")
                finished = status["files_done"] + status["files_failed"]
                bar.update(task, total=status["files_total"], completed=finished)
                if status["status"] in ("done", "failed") or time.monotonic() >= deadline:
                    return client.get(path)  # type: ignore[no-any-return]
                time.sleep(UPLOAD_POLL_INTERVAL_S)

    upload = _call(context, wait)
    if as_json:
        _print_json(upload)
    else:
        _print_upload(upload)
    if upload["status"] != "done":
        unfinished = "failed" if upload["status"] == "failed" else f"still {upload['status']}"
        typer.echo(f"errands: upload {upload['id']} {unfinished}", err=True)
        raise typer.Exit(EXIT_FAILED)


MONITOR_FIELDS = ["id", "url", "method", "interval_s", "timeout_s", "regex", "next_check_at"]


@monitors.command("list")
def list_monitors(
    context: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Monitors, oldest first."""
    found = _call(context, lambda client: client.get("/monitors", limit=limit, offset=offset))
    if as_json:
        _print_json(found)
    else:
        _print_table(
            MONITOR_FIELDS, [[monitor[name] for name in MONITOR_FIELDS] for monitor in found]
        )


@monitors.command("get")
def get_monitor(
    context: typer.Context, monitor_id: IdArgument, as_json: JsonOption = False
) -> None:
    """One monitor's settings and next check."""
    monitor = _call(context, lambda client: client.get(f"/monitors/{_id(monitor_id)}"))
    if as_json:
        _print_json(monitor)
    else:
        _print_record(monitor, MONITOR_FIELDS)


@monitors.command("delete")
def delete_monitor(
    context: typer.Context, monitor_id: IdArgument, as_json: JsonOption = False
) -> None:
    """Delete a monitor; its stored checks stay until retention removes them."""
    _call(context, lambda client: client.delete(f"/monitors/{_id(monitor_id)}"))
    if as_json:
        _print_json({"deleted": _id(monitor_id)})
    else:
        typer.echo(f"monitor {_id(monitor_id)} deleted")
