"""Every Prometheus metric Errands exports, in one catalogue that features import, and the
HTTP instrumentation that serves them at /metrics.

Process resident memory and CPU time (`process_resident_memory_bytes`,
`process_cpu_seconds_total`) come from prometheus_client's default process collector.
"""

from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

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
    "instrument",
    "serve_metrics",
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
HTTP_REQUESTS_IN_PROGRESS = Gauge(
    "http_requests_inprogress",
    "HTTP requests being answered, by method and route.",
    ["method", "handler"],
)


def instrument(app: FastAPI) -> None:
    """Count and time every request of `app` by route, and serve the metrics at GET /metrics.

    The metrics are the module-level ones above rather than the instrumentator's defaults, which
    it registers once per app and so cannot serve several apps in one process (as tests do).
    """
    app.add_middleware(_InProgressMiddleware)
    instrumentator = Instrumentator(should_group_status_codes=False, should_group_untemplated=True)
    instrumentator.add(_record_request)
    instrumentator.instrument(app)
    instrumentator.expose(app, endpoint="/metrics", include_in_schema=False)


def _record_request(info: Info) -> None:
    HTTP_REQUESTS.labels(info.method, info.modified_status, info.modified_handler).inc()
    HTTP_REQUEST_DURATION.labels(info.method, info.modified_handler).observe(info.modified_duration)


class _InProgressMiddleware:
    """The in-progress gauge, labelled like the instrumentator labels the other two."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = get_route_name(HTTPConnection(scope), should_include_root_path=False) or "none"
        in_progress = HTTP_REQUESTS_IN_PROGRESS.labels(scope["method"], handler)
        in_progress.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            in_progress.dec()


def serve_metrics(host: str, port: int | None) -> None:
    """Serve /metrics from a background thread, for the processes without the HTTP API."""
    if port is not None:
        start_http_server(port, addr=host)
