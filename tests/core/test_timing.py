"""One timing point per request: the usage stats and Prometheus report the same figure."""

import uuid

import httpx

from tests.core.test_metrics import samples, value

ROUTE = "/timer/{timer_id}"


async def duration_sum_s(api: httpx.AsyncClient) -> float:
    found = samples((await api.get("/metrics")).text)
    labels = {"method": "GET", "handler": ROUTE}
    return value(found, "http_request_duration_seconds_sum", **labels) or 0.0


async def test_stats_and_prometheus_see_the_same_duration(api: httpx.AsyncClient) -> None:
    before_s = await duration_sum_s(api)
    assert (await api.get(f"/timer/{uuid.uuid4()}")).status_code == 404
    prometheus_ms = (await duration_sum_s(api) - before_s) * 1000

    stats = (await api.get("/stats")).json()
    [counted] = [row for row in stats["since_start"] if row["route"] == ROUTE]

    assert counted["count"] == 1
    assert counted["errors"] == 1
    assert counted["avg_ms"] == round(prometheus_ms, 2)


async def test_the_request_id_is_returned_and_kept_when_sent(api: httpx.AsyncClient) -> None:
    sent = await api.get("/healthz", headers={"X-Request-ID": "trace-42"})
    made = await api.get("/healthz")

    assert sent.headers["x-request-id"] == "trace-42"
    assert len(made.headers["x-request-id"]) == 32
