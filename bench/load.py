"""HTTP load on one `errands api` process: requests/s and latency percentiles measured by wrk.

    python bench/load.py [--duration 10] [--connections 32]

Routes: GET /healthz (the floor: no database, no work), GET /timer/{id} (one primary-key read),
and POST /titles for one local site whose title is in the cache (ERRANDS_TITLES_CACHE_SIZE on by
default). The API runs with an embedded PostgreSQL in a temporary directory, or the one in
ERRANDS_DATABASE_URL; wrk (Debian package `wrk`, installed when missing and running as root)
runs on the same machine, so both share its cores. The server's CPU (per request, too) and peak
RSS are sampled.
"""

import argparse
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

PAGE = b"<!doctype html><html><head><title>Cached site</title></head><body>hi</body></html>"


@dataclass
class Result:
    route: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_percent: float
    cpu_us_per_request: float
    peak_rss_mib: float


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("bench/load.py needs wrk: apt-get install wrk")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "wrk"], check=True)
    return shutil.which("wrk") or sys.exit("wrk did not install")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Site(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        Site.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_site() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port: int = server.server_address[1]
    return port


def start_api(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ERRANDS_PORT": str(port),
        "ERRANDS_DATA_DIR": str(data_dir),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
        # One JSON line per request would measure the terminal; production ships logs elsewhere.
        "ERRANDS_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "errands", "api"], env=env, stderr=(data_dir / "api.log").open("wb")
    )


def wait_ready(base_url: str, api: subprocess.Popen[bytes], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if api.poll() is not None:
            sys.exit(f"errands api exited with {api.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit("errands api never became ready")


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    wrk: str, url: str, script: Path | None, args: argparse.Namespace, server: psutil.Process
) -> tuple[float, float, float, int, float, float, float]:
    command = [wrk, "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    command += ["-s", str(script)] if script else []
    server.cpu_percent()
    cpu_before = server.cpu_times()
    peak_rss = 0
    running = subprocess.Popen([*command, url], stdout=subprocess.PIPE, text=True)
    while running.poll() is None:
        peak_rss = max(peak_rss, server.memory_info().rss)
        time.sleep(0.2)
    cpu = server.cpu_percent()
    cpu_after = server.cpu_times()
    cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    output = running.stdout.read() if running.stdout else ""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    answered = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE)
    if not (rate and p50 and p99 and answered):
        sys.exit(f"could not read wrk's output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    failed = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(bad[1]) if bad else 0
    errors += sum(int(n) for n in failed.groups()) if failed else 0
    return (
        float(rate[1]),
        to_ms(*p50.groups()),
        to_ms(*p99.groups()),
        errors,
        cpu,
        cpu_s / max(int(answered[1]), 1) * 1e6,
        peak_rss / 2**20,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per route")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    wrk = ensure_wrk()
    site_port = start_site()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="errands-load-") as scratch:
        data_dir = Path(scratch)
        api = start_api(data_dir, port)
        try:
            wait_ready(base_url, api)
            timer = httpx.post(
                f"{base_url}/timer",
                json={"hours": 1, "url": f"http://127.0.0.1:{site_port}/hook"},
            ).raise_for_status()
            titles_body = json.dumps({"domains": [f"http://127.0.0.1:{site_port}/"]})
            warm = httpx.post(
                f"{base_url}/titles",
                content=titles_body,
                headers={"Content-Type": "application/json"},
            ).raise_for_status()
            assert "Cached site" in warm.text, warm.text
            script = data_dir / "titles.lua"
            script.write_text(
                'wrk.method = "POST"\n'
                f"wrk.body = {json.dumps(titles_body)}\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
            site_hits_before = Site.hits
            server = psutil.Process(api.pid)
            routes = [
                ("GET /healthz", f"{base_url}/healthz", None),
                ("GET /timer/{id}", f"{base_url}/timer/{timer.json()['id']}", None),
                ("POST /titles (cached)", f"{base_url}/titles", script),
            ]
            results = [
                Result(name, *run_wrk(wrk, url, lua, args, server)) for name, url, lua in routes
            ]
            site_hits = Site.hits - site_hits_before
        finally:
            api.terminate()
            api.wait(timeout=30)

    print(
        f"\nerrands api, one process; wrk -t2 -c{args.connections} -d{args.duration}s on the same "
        f"{os.cpu_count()}-core machine"
    )
    header = f"{'route':24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
    print(header + f"{'server CPU %':>13} {'CPU us/req':>11} {'server RSS MiB':>15}")
    for r in results:
        print(
            f"{r.route:24} {r.requests_per_s:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d} "
            f"{r.cpu_percent:13.0f} {r.cpu_us_per_request:11.0f} {r.peak_rss_mib:15.0f}"
        )
    floor = results[0]
    # The server is one process on one core: on an idle machine req/s follows its CPU per
    # request, which a busy machine leaves unchanged while it starves the process of cores.
    for r in results[1:]:
        print(
            f"{r.route}: {r.requests_per_s / floor.requests_per_s:.2f}x the /healthz floor "
            f"in req/s, {floor.cpu_us_per_request / r.cpu_us_per_request:.2f}x by server CPU "
            "per request"
        )
    print(f"site fetched during the titles run: {site_hits} times (cached titles)")


if __name__ == "__main__":
    main()
