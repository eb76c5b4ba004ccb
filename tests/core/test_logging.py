"""Logs as an operator reads them: one JSON object per line, request lines with their id."""

import json
import os
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
