"""Logs as an operator reads them: one JSON object per line, request lines with their id."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fixtures.app import free_port


def test_a_running_service_logs_json_lines_with_the_request_id(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_DATA_DIR": str(tmp_path),
        "ERRANDS_PORT": str(port),
        "ERRANDS_LOG_LEVEL": "info",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "errands", "api"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert service.poll() is None and time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        httpx.get(f"http://127.0.0.1:{port}/timer/nope", headers={"X-Request-ID": "trace-7"})
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=30)

    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert all({"event", "level", "timestamp"} <= record.keys() for record in records)
    [request] = [record for record in records if record.get("request_id") == "trace-7"]
    assert request["event"] == "request"
    assert (request["method"], request["path"], request["status"]) == ("GET", "/timer/nope", 422)
    assert request["duration_ms"] >= 0


LOG_ONE_LINE = (
    "import structlog, sys; from errands.core.logging import configure_logging; "
    "configure_logging('info', None if sys.argv[1] == 'unset' else sys.argv[1]); "
    "structlog.get_logger('errands.example').info('timer_fired', attempts=2)"
)


def _log_one_line(log_format: str, *, terminal: bool) -> str:
    """What one log call writes to stderr, a pseudo-terminal when `terminal`."""
    if not terminal:
        done = subprocess.run(
            [sys.executable, "-c", LOG_ONE_LINE, log_format],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stderr
    controller, terminal_end = os.openpty()
    with os.fdopen(controller, "rb", buffering=0) as reader:
        subprocess.run(
            [sys.executable, "-c", LOG_ONE_LINE, log_format], stderr=terminal_end, timeout=60
        )
        os.close(terminal_end)
        return re.sub(r"\x1b\[[0-9;]*m", "", reader.read(65536).decode())  # colours


def test_a_terminal_gets_readable_lines_and_anything_else_json() -> None:
    on_terminal = _log_one_line("unset", terminal=True)
    piped = _log_one_line("unset", terminal=False)

    assert "timer_fired" in on_terminal and "attempts=2" in on_terminal
    assert not on_terminal.lstrip().startswith("{")
    assert json.loads(piped)["event"] == "timer_fired"


def test_the_log_format_setting_overrides_the_terminal_guess() -> None:
    assert json.loads(_log_one_line("json", terminal=True))["attempts"] == 2
    console = _log_one_line("console", terminal=False)
    assert "timer_fired" in console and "attempts=2" in console
    assert not console.startswith("{")
