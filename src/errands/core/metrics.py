"""Every Prometheus metric Errands exports, in one catalogue that features import, the
observer that records each HTTP request, and the route that serves them at /metrics.

Process resident memory and CPU time (`process_resident_memory_bytes`,
`process_cpu_seconds_total`) come from prometheus_client's default process collector.
"""

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from errands.core.timing import FinishedRequest

__all__ = [
    "CHECKS",
    "CHECK_DURATION",
    "CONVERSION_CHILD_PEAK_RSS",
    "CONVERSION_DURATION",
    "CONVERSION_QUEUE_DEPTH",
    "DELIVERIES",
    "DELIVERY_LATENESS",
    "HTTP_REQUESTS",
    "HTTP_REQUESTS_IN_PROGRESS",
    "HTTP_REQUEST_DURATION",
    "SINK_LAG",
    "SINK_ROWS",
    "TIMERS_PENDING",
    "TITLES_FETCHED",
    "record_request",
    "serve_metrics",
    "serve_metrics_route",
]

TITLES_FETCHED = Counter("errands_titles_fetched_total", "Title fetches by outcome.", ["outcome"])

TIMERS_PENDING = Gauge("errands_timers_pending", "Timers not yet fired, as last counted.")
DELIVERIES = Counter(
    "errands_deliveries_total",
    "Webhook delivery attempts by source (timer, monitor.alert ...) and outcome.",
    ["source", "outcome"],
)
DELIVERY_LATENESS = Histogram(
    "errands_delivery_lateness_seconds",
    "Time from a delivery's due time to its first attempt being sent.",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

CONVERSION_QUEUE_DEPTH = Gauge(
    "errands_conversion_queue_depth", "Files waiting to be converted, as last counted."
)
CONVERSION_DURATION = Histogram(
    "errands_conversion_duration_seconds",
    "Time to convert one uploaded file.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CONVERSION_CHILD_PEAK_RSS = Histogram(
    "errands_conversion_child_peak_rss_bytes",
    "Peak resident memory of the child process that converted a file.",
    buckets=tuple(float(mib << 20) for mib in (32, 64, 128, 256, 512, 1024, 2048)),
)

CHECKS = Counter("errands_checks_total", "Website checks made, by result.", ["result"])
CHECK_DURATION = Histogram(
    "errands_check_duration_seconds",
    "Response time of website checks.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_ROWS = Counter("errands_sink_rows_total", "Check results written to PostgreSQL.")
SINK_LAG = Gauge(
    "errands_sink_lag_messages",
    "Check results published but not yet stored, per partition.",
    ["partition"],
)
BUS_PUBLISH_QUEUED = Gauge(
    "errands_bus_publish_queued_messages",
    "Check results waiting in this process for Kafka to acknowledge them.",
)
BUS_PUBLISH_FAILURES = Counter(
    "errands_bus_publish_failures_total",
    "Check results whose send to Kafka failed and is tried again.",
)
BUS_PUBLISH_DROPPED = Counter(
    "errands_bus_publish_dropped_total",
    "Check results dropped: the queue waiting for Kafka was full, or the process stopped.",
)
BUS_LAST_PUBLISH = Gauge(
    "errands_bus_last_publish_timestamp_seconds",
    "When Kafka last acknowledged check results from this process.",
)
BUS_LAST_CONSUME = Gauge(
    "errands_bus_last_consume_timestamp_seconds",
    "When this process last read from Kafka (messages, or the partitions' ends while idle).",
)

# HTTP, per route template ("/timer/{timer_id}", or "none" for paths no route serves, so that
# scanners cannot grow the label set).
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, status and route.",
    ["method", "status", "handler"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route.",
    ["method", "handler"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Labelled by method only: the route is known once the router has matched, after the request
# began.
HTTP_REQUESTS_IN_PROGRESS = Gauge(
    "http_requests_inprogress", "HTTP requests being answered, by method.", ["method"]
)


def record_request(finished: FinishedRequest) -> None:
    """Count and time one answered request under its route template."""
    handler = finished.route or "none"
    HTTP_REQUESTS.labels(finished.method, str(finished.status), handler).inc()
    HTTP_REQUEST_DURATION.labels(finished.method, handler).observe(finished.duration_s)


def serve_metrics_route(app: FastAPI) -> None:
    """Serve every metric of this process at GET /metrics."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def serve_metrics(host: str, port: int | None) -> None:
    """Serve /metrics from a background thread, for the processes without the HTTP API."""
    if port is not None:
        start_http_server(port, addr=host)
