"""The checker loop: claim due monitors, check each site once per slot, publish the result."""

import asyncio
import functools
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import regex
import structlog

from errands.core import claims
from errands.core.batching import Batcher
from errands.core.http import GuardedClient, OutboundError
from errands.core.metrics import CHECK_DURATION, CHECKS
from errands.core.resources import Resources
from errands.monitors import store
from errands.monitors.results import CheckResult, ErrorKind, encode_check

__all__ = ["MAX_REGEX_BODY_BYTES", "check_site", "run_checker"]

log = structlog.get_logger(__name__)

# The regex runs on at most this much of the decoded page, under a time bound.
MAX_REGEX_BODY_BYTES = 1024 * 1024
CLAIM_BATCH_SIZE = 500
POLL_INTERVAL_S = 1.0
RESCHEDULE_LINGER_S = 0.01

# Failures the guarded client reports that are not one of the documented kinds (a blocked
# address, a redirect loop) are stored as "other", with the detail in the error text.
_KNOWN_KINDS: dict[str, ErrorKind] = {
    "dns": "dns",
    "connect": "connect",
    "tls": "tls",
    "timeout": "timeout",
}


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> Any:
    return regex.compile(pattern)


def _charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip("\"' ")
    return "utf-8"


def _decoded(body: bytes, content_type: str | None) -> str:
    try:
        return body.decode(_charset(content_type), errors="replace")
    # A charset Python does not know, or one of its codecs that cannot replace bad bytes.
    except (LookupError, UnicodeError):
        return body.decode("utf-8", errors="replace")


async def check_site(
    http: GuardedClient, monitor: dict[str, Any], *, regex_timeout_s: float
) -> CheckResult:
    """Request the monitor's URL once and describe what happened."""
    check_id, checked_at = uuid.uuid4(), datetime.now(UTC)
    try:
        response = await http.fetch(
            monitor["method"],
            monitor["url"],
            timeout_s=monitor["timeout_s"],
            max_body_bytes=MAX_REGEX_BODY_BYTES if monitor["regex"] else 0,
            truncate=True,
        )
    except OutboundError as error:
        return CheckResult(
            check_id=check_id,
            monitor_id=monitor["id"],
            checked_at=checked_at,
            url=monitor["url"],
            status_code=None,
            response_time_ms=None,
            dns_ms=None,
            connect_ms=None,
            tls_ms=None,
            first_byte_ms=None,
            regex_matched=None,
            error_kind=_KNOWN_KINDS.get(error.kind, "other"),
            error=str(error),
        )
    regex_matched: bool | None = None
    error_kind: ErrorKind | None = None
    error_text: str | None = None
    if monitor["regex"]:
        text = _decoded(response.body, response.headers.get("Content-Type"))
        try:
            found = _compiled(monitor["regex"]).search(text, timeout=regex_timeout_s)
            regex_matched = found is not None
        except TimeoutError:
            error_kind = "other"
            error_text = f"regex search took longer than {regex_timeout_s} s"
    phases = response.phases
    return CheckResult(
        check_id=check_id,
        monitor_id=monitor["id"],
        checked_at=checked_at,
        url=monitor["url"],
        status_code=response.status,
        response_time_ms=round(response.elapsed_ms, 3),
        dns_ms=phases.dns_ms,
        connect_ms=phases.connect_ms,
        tls_ms=phases.tls_ms,
        first_byte_ms=phases.first_byte_ms,
        regex_matched=regex_matched,
        error_kind=error_kind,
        error=error_text,
    )


async def run_checker(resources: Resources, stop: asyncio.Event) -> None:
    """Loop "monitors": check every due monitor, publish its result, move it to its next slot."""
    settings = resources.settings
    owner = claims.new_owner()
    # At a thousand checks a second a statement per check would cost more than the checks:
    # monitors checked within a few milliseconds of each other move on in one UPDATE.
    rescheduler = Batcher(
        functools.partial(store.reschedule_checked, resources.pool, owner=owner),
        name="monitors:reschedule",
        linger_s=RESCHEDULE_LINGER_S,
    )
    queue = claims.ClaimQueue(
        table="monitors",
        channel=store.CHANNEL,
        lease=timedelta(seconds=settings.monitor_lease_s),
        batch_size=CLAIM_BATCH_SIZE,
        max_in_flight=settings.monitor_max_in_flight,
        poll_interval_s=POLL_INTERVAL_S,
    )

    async def check(monitor: dict[str, Any]) -> None:
        started = time.perf_counter()
        result = await check_site(
            resources.http, monitor, regex_timeout_s=settings.monitor_regex_timeout_s
        )
        await resources.bus.publish(str(monitor["id"]).encode(), encode_check(result))
        CHECKS.labels(result="up" if result.up else (result.error_kind or "down")).inc()
        CHECK_DURATION.observe(time.perf_counter() - started)
        if not await rescheduler.submit((monitor["id"], monitor["due_at"])):
            log.info("monitor_changed_while_checked", monitor_id=str(monitor["id"]))

    await claims.run_claim_loop(
        queue,
        resources.pool,
        resources.database_url,
        check,
        stop,
        owner=owner,
        grace_s=settings.shutdown_grace_s,
    )
