"""Titles: 1,000 local sites fetched by Errands' API, by requests in 32 threads, by
httpx.AsyncClient, and (100 of them) by plain sequential requests.

    python bench/titles.py [--sites 1000] [--sequential-sites 100] [--delay-ms 50]

Every site is its own host:port on 127.0.0.1, served by a separate process, and answers after
50 ms with a 200 KB page whose <title> sits about 1.5 KB in. Errands runs as an `errands api`
process (embedded PostgreSQL in a temporary directory, cache off) and is timed from POST to
answer; its CPU time and peak RSS are the server process's. Each peer runs in a fresh process
and reports its own. The peers are written as users usually write them: get the page, then look
for the title in its text.
"""

import argparse
import asyncio
import concurrent.futures
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import requests

PAGE_BYTES = 200 * 1024
TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
ERRANDS_TARGET_S = 1.0
THREADS_SPEEDUP_TARGET = 10
FLOOR_RATIO_TARGET = 1.1


def met(reached: bool) -> str:
    return "met" if reached else "NOT met"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def page_head(site: int) -> bytes:
    """About 1.5 KB of head before the title, as real pages have, so the title is not first."""
    metas = "".join(f'<meta name="bench-{n}" content="{"x" * 60}">\n' for n in range(18))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"{metas}<title>Site number {site}</title>\n</head><body>\n"
    ).encode()


# --- the sites: one process, one listening port per site ---------------------------------------


def serve_sites(count: int, delay_s: float) -> None:
    import uvloop
    from aiohttp import web

    async def main() -> None:
        heads: dict[int, bytes] = {}
        tail = b"<p>" + b"lorem ipsum " * (PAGE_BYTES // 12) + b"</p></body></html>"

        async def answer(request: web.Request) -> web.StreamResponse:
            head = heads[request.transport.get_extra_info("sockname")[1]]  # type: ignore[union-attr]
            await asyncio.sleep(delay_s)
            response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
            body = head + tail[: PAGE_BYTES - len(head)]
            response.content_length = len(body)
            await response.prepare(request)
            try:
                await response.write(body)
                await response.write_eof()
            except ConnectionError:
                pass  # Errands hangs up once it has the title
            return response

        app = web.Application()
        app.router.add_get("/", answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        ports = []
        for site in range(count):
            tcp = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await tcp.start()
            port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            heads[port] = page_head(site)
            ports.append(port)
        print(json.dumps(ports), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    raise_fd_limit()
    uvloop.run(main())


# --- the peers: each in a fresh process that reports its own wall, CPU and peak RSS -----------


def title_of(text: str) -> str | None:
    match = TITLE.search(text)
    return " ".join(match.group(1).split()) if match else None


def by_requests_in_threads(urls: list[str]) -> list[str | None]:
    with requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

        def one(url: str) -> str | None:
            try:
                return title_of(session.get(url, timeout=10).text)
            except requests.RequestException:
                return None

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            return list(pool.map(one, urls))


def by_httpx_async(urls: list[str]) -> list[str | None]:
    async def main() -> list[str | None]:
        limits = httpx.Limits(max_connections=len(urls), max_keepalive_connections=len(urls))
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:

            async def one(url: str) -> str | None:
                try:
                    return title_of((await client.get(url)).text)
                except httpx.HTTPError:
                    return None

            return list(await asyncio.gather(*(one(url) for url in urls)))

    return asyncio.run(main())


def by_sequential_requests(urls: list[str]) -> list[str | None]:
    titles = []
    for url in urls:
        try:
            titles.append(title_of(requests.get(url, timeout=10).text))
        except requests.RequestException:
            titles.append(None)
    return titles


def by_bare_aiohttp(urls: list[str]) -> list[str | None]:
    """The floor on this machine: one aiohttp session reading each page's first 4 KB, with
    no guard, no charset handling and no API in front."""
    import aiohttp
    import uvloop

    async def main() -> list[str | None]:
        connector = aiohttp.TCPConnector(limit=len(urls))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(url: str) -> str | None:
                async with session.get(url) as response:
                    return title_of((await response.content.read(4096)).decode())

            return list(await asyncio.gather(*(one(url) for url in urls)))

    return uvloop.run(main())


PEERS: dict[str, Callable[[list[str]], list[str | None]]] = {
    "bare aiohttp, first 4 KB (floor)": by_bare_aiohttp,
    "requests+threads": by_requests_in_threads,
    "httpx.AsyncClient": by_httpx_async,
    "sequential requests": by_sequential_requests,
}


def run_peer(name: str, urls_file: str) -> None:
    raise_fd_limit()
    urls = json.loads(Path(urls_file).read_text())
    cpu_before = time.process_time()
    started = time.perf_counter()
    titles = PEERS[name](urls)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok = sum(1 for n, title in enumerate(titles) if title == f"Site number {n}")
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_kib / 1024, "ok": ok}))


def measure_peer(name: str, urls: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(urls, handle)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--peer", name, handle.name],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    finally:
        os.unlink(handle.name)
    return {"name": name, "sites": len(urls), **json.loads(out.strip().splitlines()[-1])}


# --- Errands: an `errands api` process --------------------------------------------------------


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 2**20


def start_errands(data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ERRANDS_DATA_DIR": data_dir,
        "ERRANDS_PORT": str(port),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
        "ERRANDS_TITLES_CACHE_SIZE": "0",
        "ERRANDS_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "errands", "api"], env=env, preexec_fn=raise_fd_limit
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("errands api did not become ready within 60 s")


def measure_errands(urls: list[str], port: int, label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="errands-bench-") as data_dir:
        server = start_errands(data_dir, port)
        try:
            process = psutil.Process(server.pid)
            idle_rss_mib = process.memory_info().rss / 2**20
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                runs = []
                for run in ("first run", "second run"):
                    cpu_before = sum(process.cpu_times()[:2])
                    started = time.perf_counter()
                    answer = client.post("/titles", json={"domains": urls}).json()
                    wall = time.perf_counter() - started
                    cpu = sum(process.cpu_times()[:2]) - cpu_before
                    titles = answer["titles"]
                    ok = sum(1 for n, title in enumerate(titles) if title == f"Site number {n}")
                    runs.append(
                        {
                            "name": f"{label} ({run})",
                            "sites": len(urls),
                            "wall_s": wall,
                            "cpu_s": cpu,
                            "peak_rss_mib": peak_rss_mib(server.pid),
                            "ok": ok,
                            "idle_rss_mib": idle_rss_mib,
                        }
                    )
            return {"first": runs[0], "second": runs[1]}
        finally:
            server.terminate()
            server.wait(timeout=30)


def title_reading_cpu_ms(pages: int = 1000) -> float:
    """CPU to read one bench page's title alone (decode, parse, early stop), in this process."""
    from errands.titles.extract import TitleReader

    tail = b"<p>" + b"lorem ipsum " * (PAGE_BYTES // 12) + b"</p></body></html>"
    bodies = [(page_head(n) + tail)[:PAGE_BYTES] for n in range(pages)]
    started = time.process_time()
    for body in bodies:
        reader = TitleReader("text/html; charset=utf-8")
        for start in range(0, len(body), 8192):
            if reader.feed(body[start : start + 8192]):
                break
        reader.result()
    return (time.process_time() - started) / pages * 1000


# --- the table --------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], errands: dict[str, Any]) -> str:
    lines = [
        "| fetcher | sites | wall s | per 1,000 sites s | CPU s | peak RSS MiB | titles right |"
        " Errands faster by |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = errands["wall_s"] / errands["sites"]
    for row in rows:
        per_site = row["wall_s"] / row["sites"]
        lines.append(
            f"| {row['name']} | {row['sites']} | {row['wall_s']:.3f} | {per_site * 1000:.2f} |"
            f" {row['cpu_s']:.2f} | {row['peak_rss_mib']:.0f} | {row['ok']}/{row['sites']} |"
            f" {per_site / base:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--sequential-sites", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--serve-sites", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peer", nargs=2, metavar=("NAME", "URLS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sites:
        serve_sites(args.sites, args.delay_ms / 1000)
        return
    if args.peer:
        run_peer(*args.peer)
        return

    raise_fd_limit()
    load_before = os.getloadavg()
    sites = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-sites",
            "--sites",
            str(args.sites),
            "--delay-ms",
            str(args.delay_ms),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sites.stdout is not None
        ports = json.loads(sites.stdout.readline())
        urls = [f"http://127.0.0.1:{port}/" for port in ports]
        errands_port = 18000 + os.getpid() % 1000
        errands = measure_errands(urls, errands_port, "Errands API")
        rows = [errands["first"], errands["second"]]
        rows.append(measure_peer("requests+threads", urls))
        rows.append(measure_peer("httpx.AsyncClient", urls))
        rows.append(measure_peer("sequential requests", urls[: args.sequential_sites]))
        rows.append(measure_peer("bare aiohttp, first 4 KB (floor)", urls))
    finally:
        if sites.stdin is not None:
            sites.stdin.close()
        sites.wait(timeout=30)

    cold = errands["first"]
    threads = rows[2]
    speedup = threads["wall_s"] / cold["wall_s"]
    verdict = (
        f"Errands (cold): {cold['wall_s']:.3f} s for {cold['sites']} sites"
        f" (target < {ERRANDS_TARGET_S:.1f} s: {met(cold['wall_s'] < ERRANDS_TARGET_S)});"
        f" {speedup:.1f}x faster than requests + 32 threads"
        f" (target >= {THREADS_SPEEDUP_TARGET}x: {met(speedup >= THREADS_SPEEDUP_TARGET)})"
    )
    verdict += (
        f"\nErrands server RSS when idle, before the first request: {cold['idle_rss_mib']:.0f} MiB"
    )
    floor = rows[-1]
    ratio = cold["wall_s"] / floor["wall_s"]
    verdict += (
        f"\nErrands (cold) against the bare-aiohttp floor: {ratio:.2f}x the floor's wall time"
        f" (target <= {FLOOR_RATIO_TARGET}x: {met(ratio <= FLOOR_RATIO_TARGET)})"
        f"\nCPU per title: {cold['cpu_s'] / cold['sites'] * 1000:.2f} ms in the server (request,"
        f" fetch, guard, reading, answer); reading the title alone {title_reading_cpu_ms():.3f} ms"
        f"\nLoad average (1, 5, 15 min) before the run: "
        + ", ".join(f"{load:.2f}" for load in load_before)
        + f" on {os.cpu_count()} cores"
    )
    report = table(rows, cold) + "\n\n" + verdict
    print(report)


if __name__ == "__main__":
    main()
