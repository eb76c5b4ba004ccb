"""The `errands` command: choosing loops and scopes, and roles that cannot run as configured."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from errands.cli import http_server, pick, worker_loops
from errands.config import Settings


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
        (None, True, ["timers", "monitors", "conversions", "sweeper"]),
        (None, False, ["timers", "monitors", "conversions", "sweeper", "sink"]),
        ("monitors", True, ["monitors"]),
        ("monitors", False, ["monitors", "sink"]),
        ("timers", False, ["timers"]),
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
