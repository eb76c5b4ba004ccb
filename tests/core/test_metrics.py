"""GET /metrics: HTTP metrics per route template, process memory and CPU, the feature metrics,
and the metrics endpoint of processes that serve no API."""

import asyncio
import os
import subprocess
import sys
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.fixtures.app import free_port

FEATURE_METRICS = [
    "errands_titles_fetched",
    "errands_timers_pending",
    "errands_deliveries",
    "errands_delivery_lateness_seconds",
    "errands_conversion_queue_depth",
    "errands_conversion_duration_seconds",
    "errands_conversion_child_peak_rss_bytes",
    "errands_checks",
    "errands_check_duration_seconds",
    "errands_sink_rows",
    "errands_sink_lag_messages",
]


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float | None:
    for sample in found:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


async def test_requests_are_counted_and_timed_per_route_template(api: httpx.AsyncClient) -> None:
    route = {"method": "GET", "handler": "/timer/{timer_id}"}
    before = samples((await api.get("/metrics")).text)
    count_before = value(before, "http_requests_total", status="404", **route) or 0

    for _ in range(3):
        await api.get(f"/timer/{uuid.uuid4()}")
    response = await api.get("/metrics")

    assert response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)
    assert value(after, "http_requests_total", status="404", **route) == count_before + 3
    assert (value(after, "http_request_duration_seconds_count", **route) or 0) >= 3
    assert value(after, "http_request_duration_seconds_bucket", le="+Inf", **route) is not None
    assert value(after, "http_requests_inprogress", method="GET") == 1, "this very request"


async def test_paths_no_route_serves_share_one_label(api: httpx.AsyncClient) -> None:
    for path in ("/wp-admin", "/.env", f"/{uuid.uuid4()}"):
        await api.get(path)

    found = samples((await api.get("/metrics")).text)

    handlers = {s.labels["handler"] for s in found if s.name == "http_requests_total"}
    assert "none" in handlers
    assert not {"/wp-admin", "/.env"} & handlers


async def test_process_memory_cpu_and_feature_metrics_are_exported(
    api: httpx.AsyncClient,
) -> None:
    text = (await api.get("/metrics")).text
    found = samples(text)

    assert (value(found, "process_resident_memory_bytes") or 0) > 10 * 2**20
    assert value(found, "process_cpu_seconds_total") is not None
    # Every feature metric is listed from the start, even before it has a first sample.
    served = {family.name for family in text_string_to_metric_families(text)}
    assert set(FEATURE_METRICS) - served == set()


async def test_a_worker_serves_its_metrics_on_the_metrics_port(database_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_METRICS_PORT": str(port),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
    }
    worker = subprocess.Popen(  # noqa: ASYNC220 (started once; waited for in a thread)
        [sys.executable, "-m", "errands", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        text = await poll_metrics(f"http://127.0.0.1:{port}/metrics", worker)
        assert value(samples(text), "process_resident_memory_bytes") is not None
        assert "# TYPE errands_timers_pending gauge" in text
    finally:
        worker.terminate()
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0, stderr.decode()[-2000:]


async def poll_metrics(url: str, process: subprocess.Popen[bytes], within_s: float = 30) -> str:
    deadline = asyncio.get_running_loop().time() + within_s
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            assert process.poll() is None, "the worker exited"
            try:
                return (await client.get(url)).raise_for_status().text
            except httpx.TransportError:
                assert asyncio.get_running_loop().time() < deadline, "no metrics endpoint"
                await asyncio.sleep(0.1)
