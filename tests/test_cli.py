"""The `errands` command: choosing loops and scopes, roles that cannot run as configured, and
the commands that call a running service, run for real against one."""

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
import typer

from errands.cli import http_server, pick, worker_loops
from errands.config import Settings
from tests.conversions import samples
from tests.fixtures.app import RunningApp, free_port, serve_app


def test_pick_keeps_each_name_once_in_the_order_given() -> None:
    assert pick(" monitors, timers,monitors,", ["timers", "monitors", "sink"]) == [
        "monitors",
        "timers",
    ]


@pytest.mark.parametrize("text", ["", " , ", "timers,nope"])
def test_pick_refuses_unknown_names_and_an_empty_choice(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="choose from timers, sink"):
        pick(text, ["timers", "sink"])


@pytest.mark.parametrize(
    ("only", "kafka", "loops"),
    [
        (None, True, ["deliveries", "timers", "monitors", "conversions", "sweeper"]),
        (None, False, ["deliveries", "timers", "monitors", "conversions", "sweeper", "sink"]),
        ("monitors", True, ["monitors"]),
        ("monitors", False, ["monitors", "sink"]),
        ("timers", False, ["timers", "deliveries"]),
        ("deliveries", False, ["deliveries"]),
    ],
)
def test_without_kafka_a_worker_running_monitors_runs_their_sink(
    only: str | None, kafka: bool, loops: list[str]
) -> None:
    assert worker_loops(only, kafka=kafka) == loops


@pytest.mark.parametrize("kafka", [True, False])
def test_the_sink_is_not_a_worker_loop_to_choose(kafka: bool) -> None:
    with pytest.raises(typer.BadParameter):
        worker_loops("sink", kafka=kafka)


def test_the_sink_without_kafka_stops_with_one_line(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ERRANDS_")}
    done = subprocess.run(
        [sys.executable, "-m", "errands", "sink"],
        env={**env, "ERRANDS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "ERRANDS_KAFKA_BOOTSTRAP_SERVERS" in done.stderr
    assert not (tmp_path / "postgres").exists(), "started a database it could not use"


@pytest.mark.parametrize(("grace_s", "whole_s"), [(0.5, 1), (2.2, 3), (20.0, 20)])
def test_requests_in_flight_get_at_least_the_grace_period(grace_s: float, whole_s: int) -> None:
    server = http_server(Settings(shutdown_grace_s=grace_s), loops=())

    assert server.config.timeout_graceful_shutdown == whole_s


# --- the real `errands` command against a running service -----------------------------------

ERRANDS = str(Path(sys.executable).parent / "errands")


def _environment(**settings: str) -> dict[str, str]:
    kept = {name: value for name, value in os.environ.items() if not name.startswith("ERRANDS_")}
    return {**kept, **settings}


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


async def errands(*arguments: str, **settings: str) -> Ran:
    """Run `errands ARGUMENTS` without blocking the event loop the test's service runs on."""
    process = await asyncio.create_subprocess_exec(
        ERRANDS,
        *arguments,
        env=_environment(**settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


async def test_version_is_the_package_version() -> None:
    ran = await errands("--version")
    assert (ran.code, ran.stdout) == (0, f"errands {version('errands')}\n")


async def test_keys_against_an_unreachable_database_print_one_line(tmp_path: Path) -> None:
    ran = await errands(
        "keys",
        "list",
        ERRANDS_DATABASE_URL=f"postgresql://errands@127.0.0.1:{free_port()}/errands",
        ERRANDS_DATA_DIR=str(tmp_path),
    )
    assert ran.code == 3
    assert ran.stderr.count("\n") == 1
    assert ran.stderr.startswith("errands: cannot reach the database: ")


async def test_a_service_out_of_reach_is_one_line_and_exit_3() -> None:
    ran = await errands(
        "timers", "get", str(uuid.uuid4()), ERRANDS_API_URL=f"http://127.0.0.1:{free_port()}"
    )
    assert ran.code == 3
    assert ran.stderr.count("\n") == 1
    assert "cannot reach the service at http://127.0.0.1:" in ran.stderr


async def test_timers_create_get_and_cancel(app: RunningApp) -> None:
    service = {"ERRANDS_API_URL": app.base_url}

    created = await errands(
        "timers", "create", "https://example.com/hook", "--minutes", "5", "--json", **service
    )
    timer = json.loads(created.stdout)
    shown = await errands("timers", "get", timer["id"], **service)
    cancelled = await errands("timers", "cancel", timer["id"], **service)
    again = await errands("timers", "cancel", timer["id"], "--json", **service)

    assert (created.code, timer["time_left"]) == (0, 300)
    assert shown.code == 0
    assert re.search(r"^status\s+pending$", shown.stdout, flags=re.MULTILINE)
    assert re.search(r"^url\s+https://example.com/hook$", shown.stdout, flags=re.MULTILINE)
    assert (cancelled.code, cancelled.stdout) == (0, f"timer {timer['id']} cancelled\n")
    assert (again.code, again.stdout) == (1, "")
    assert again.stderr == f"errands: timer {timer['id']} is already cancelled\n"


async def test_a_refused_request_prints_the_services_message(app: RunningApp) -> None:
    missing = uuid.uuid4()
    not_found = await errands("timers", "get", str(missing), ERRANDS_API_URL=app.base_url)
    bad_url = await errands("timers", "create", "ftp://example.com", ERRANDS_API_URL=app.base_url)
    not_an_id = await errands("timers", "get", "nope", ERRANDS_API_URL=app.base_url)

    assert (not_found.code, not_found.stderr) == (1, f"errands: no timer with id {missing}\n")
    assert bad_url.code == 1
    assert bad_url.stderr == "errands: url must be an http:// or https:// URL with a host\n"
    assert not_an_id.code == 2


async def test_uploads_add_wait_and_get(settings: Settings, tmp_path: Path) -> None:
    picture = tmp_path / "picture.png"
    picture.write_bytes(samples.png(640, 480))
    async with serve_app(settings, loops=["conversions"]) as running:
        service = {"ERRANDS_API_URL": running.base_url}
        added = await errands("uploads", "add", str(picture), "--json", **service)
        upload_id = json.loads(added.stdout)["id"]
        waited = await errands("uploads", "wait", upload_id, "--json", **service)
        shown = await errands("uploads", "get", upload_id, **service)
        missing_file = await errands("uploads", "add", str(tmp_path / "nope.png"), **service)

    upload = json.loads(waited.stdout)
    assert (added.code, waited.code, shown.code) == (0, 0, 0)
    assert upload["status"] == "done"
    assert [(image["width"], image["height"]) for image in upload["files"][0]["images"]] == [
        (640, 480)
    ]
    assert f"upload {upload_id}: done" in shown.stdout
    assert "picture.png" in shown.stdout and "(640x480)" in shown.stdout
    assert missing_file.code == 2
    assert missing_file.stderr.count("\n") == 1


async def test_uploads_wait_exits_1_when_a_file_failed(settings: Settings, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(samples.png(64, 64)[:60])  # a PNG cut short
    async with serve_app(settings, loops=["conversions"]) as running:
        service = {"ERRANDS_API_URL": running.base_url}
        added = await errands("uploads", "add", str(broken), "--json", **service)
        waited = await errands("uploads", "wait", json.loads(added.stdout)["id"], **service)

    assert waited.code == 1
    assert "failed" in waited.stdout
    assert waited.stderr.endswith(" failed\n")


async def test_monitors_list_get_and_delete(app: RunningApp) -> None:
    service = {"ERRANDS_API_URL": app.base_url}
    made = await app.client.post(
        "/monitors", json={"url": "https://example.com/", "interval_s": 60}
    )
    monitor_id = made.json()["id"]

    listed = await errands("monitors", "list", "--json", **service)
    table = await errands("monitors", "list", **service)
    shown = await errands("monitors", "get", monitor_id, **service)
    deleted = await errands("monitors", "delete", monitor_id, **service)
    gone = await errands("monitors", "get", monitor_id, **service)

    assert [monitor["id"] for monitor in json.loads(listed.stdout)] == [monitor_id]
    assert monitor_id in table.stdout and "https://example.com/" in table.stdout
    assert re.search(r"^interval_s\s+60$", shown.stdout, flags=re.MULTILINE)
    assert (deleted.code, deleted.stdout) == (0, f"monitor {monitor_id} deleted\n")
    assert gone.code == 1


async def test_monitors_sync_dry_run_and_prune(database_url: str, tmp_path: Path) -> None:
    database = {
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_DATA_DIR": str(tmp_path),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
    }
    both = tmp_path / "both.yaml"
    both.write_text(
        "- {url: 'https://example.com/a', interval_s: 60}\n"
        "- {url: 'https://example.com/b', interval_s: 60}\n"
    )
    only_a = tmp_path / "only-a.yaml"
    only_a.write_text("- {url: 'https://example.com/a', interval_s: 30}\n")

    created = await errands("monitors", "sync", str(both), **database)
    planned = await errands(
        "monitors", "sync", str(only_a), "--prune", "--dry-run", "--json", **database
    )
    unchanged = await errands("monitors", "sync", str(both), "--json", **database)
    pruned = await errands("monitors", "sync", str(only_a), "--prune", **database)

    assert created.code == 0 and created.stdout.endswith("2 of 2 monitors changed\n")
    assert json.loads(planned.stdout) == {
        "dry_run": True,
        "monitors": [
            {"outcome": "updated", "url": "https://example.com/a"},
            {"outcome": "deleted", "url": "https://example.com/b"},
        ],
    }
    assert [site["outcome"] for site in json.loads(unchanged.stdout)["monitors"]] == [
        "unchanged",
        "unchanged",
    ], "the dry run wrote something"
    assert pruned.stdout.splitlines() == [
        "updated    https://example.com/a",
        "deleted    https://example.com/b",
        "2 of 2 monitors changed",
    ]


async def test_timers_list_pages_newest_first(app: RunningApp) -> None:
    service = {"ERRANDS_API_URL": app.base_url}
    ids = [
        (
            await app.client.post("/timer", json={"minutes": 5, "url": "https://example.com/hook"})
        ).json()["id"]
        for _ in range(3)
    ]

    first = await errands("timers", "list", "--limit", "2", "--json", **service)
    page = json.loads(first.stdout)
    rest = await errands("timers", "list", "--cursor", page["next_cursor"], **service)

    assert [timer["id"] for timer in page["timers"]] == ids[:0:-1]
    assert ids[0] in rest.stdout and "pending" in rest.stdout
    assert "more:" not in rest.stdout
