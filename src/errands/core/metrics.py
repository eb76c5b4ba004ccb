"""Every Prometheus metric Errands exports, in one catalogue that features import."""

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CHECKS",
    "CHECK_DURATION",
    "CONVERSION_CHILD_PEAK_RSS",
    "CONVERSION_DURATION",
    "CONVERSION_QUEUE_DEPTH",
    "SINK_LAG",
    "SINK_ROWS",
    "TIMERS_FIRED",
    "TIMERS_PENDING",
    "TIMER_LATENESS",
    "TITLES_FETCHED",
]

TITLES_FETCHED = Counter("errands_titles_fetched_total", "Title fetches by outcome.", ["outcome"])

TIMERS_PENDING = Gauge("errands_timers_pending", "Timers not yet fired, as last counted.")
TIMERS_FIRED = Counter("errands_timers_fired_total", "Webhook deliveries by outcome.", ["outcome"])
TIMER_LATENESS = Histogram(
    "errands_timer_lateness_seconds",
    "Time from a timer's due time to its webhook being sent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
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
