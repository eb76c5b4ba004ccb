"""The checker loop: claim due monitors, check each site once per slot, publish the result."""

import asyncio
import functools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import regex
import structlog
from cryptography import x509

from errands.core import claims
from errands.core.batching import Batcher
from errands.core.http import GuardedClient, OutboundError, masked_url
from errands.core.metrics import CHECK_DURATION, CHECKS
from errands.core.resources import Resources
from errands.monitors import store
from errands.monitors.results import CheckResult, ErrorKind, encode_check, status_expected

__all__ = ["MAX_REGEX_BODY_BYTES", "check_site", "check_tcp", "run_checker"]

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


# Searches run in these threads, never on the event loop: the regex module releases the GIL
# while it matches (concurrent=True) and gives up after the timeout, so a catastrophic pattern
# costs one thread for at most that long and the API keeps answering.
REGEX_THREADS = 1
_regex_searches = ThreadPoolExecutor(max_workers=REGEX_THREADS, thread_name_prefix="regex")


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


def _search(pattern: str, body: bytes, content_type: str | None, timeout_s: float) -> bool:
    """Whether the pattern is in the page; raises TimeoutError after `timeout_s`."""
    text = _decoded(body, content_type)
    return _compiled(pattern).search(text, timeout=timeout_s, concurrent=True) is not None


def _certificate_expiry(der: bytes | None) -> datetime | None:
    if der is None:
        return None
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc
    except ValueError:
        return None


def _failed(
    monitor: dict[str, Any], check_id: uuid.UUID, checked_at: datetime, error: OutboundError
) -> CheckResult:
    return CheckResult(
        check_id=check_id,
        monitor_id=monitor["id"],
        checked_at=checked_at,
        url=masked_url(monitor["url"]),
        status_code=None,
        response_time_ms=None,
        dns_ms=None,
        connect_ms=None,
        tls_ms=None,
        first_byte_ms=None,
        regex_matched=None,
        error_kind=_KNOWN_KINDS.get(error.kind, "other"),
        error=str(error),
        accepted=False,
    )


async def check_tcp(http: GuardedClient, monitor: dict[str, Any]) -> CheckResult:
    """Open a TCP connection to the monitor's `tcp://host:port` once: up when it connects."""
    check_id, checked_at = uuid.uuid4(), datetime.now(UTC)
    try:
        connected = await http.connect_tcp(monitor["url"], timeout_s=monitor["timeout_s"])
    except OutboundError as error:
        return _failed(monitor, check_id, checked_at, error)
    elapsed_ms = connected.connect_ms + (connected.dns_ms or 0.0)
    return CheckResult(
        check_id=check_id,
        monitor_id=monitor["id"],
        checked_at=checked_at,
        url=masked_url(monitor["url"]),
        status_code=None,
        response_time_ms=round(elapsed_ms, 3),
        dns_ms=connected.dns_ms,
        connect_ms=connected.connect_ms,
        tls_ms=None,
        first_byte_ms=None,
        regex_matched=None,
        error_kind=None,
        error=None,
        accepted=True,
    )


async def check_site(
    http: GuardedClient, monitor: dict[str, Any], *, regex_timeout_s: float
) -> CheckResult:
    """Request the monitor's URL once and describe what happened, judged by its rules: the
    status must be one it expects, and the regex found (must_match) or absent (must_not_match)."""
    if monitor["url"].startswith("tcp://"):
        return await check_tcp(http, monitor)
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
        return _failed(monitor, check_id, checked_at, error)
    regex_matched: bool | None = None
    error_kind: ErrorKind | None = None
    error_text: str | None = None
    if monitor["regex"]:
        try:
            regex_matched = await asyncio.get_running_loop().run_in_executor(
                _regex_searches,
                _search,
                monitor["regex"],
                response.body,
                response.headers.get("Content-Type"),
                regex_timeout_s,
            )
        except TimeoutError:
            error_kind = "other"
            error_text = f"regex search took longer than {regex_timeout_s} s"
    accepted = status_expected(response.status, monitor["expected_status"])
    if regex_matched is not None:
        accepted = accepted and regex_matched == (monitor["regex_mode"] == "must_match")
    phases = response.phases
    return CheckResult(
        check_id=check_id,
        monitor_id=monitor["id"],
        checked_at=checked_at,
        url=masked_url(monitor["url"]),
        status_code=response.status,
        response_time_ms=round(response.elapsed_ms, 3),
        dns_ms=phases.dns_ms,
        connect_ms=phases.connect_ms,
        tls_ms=phases.tls_ms,
        first_byte_ms=phases.first_byte_ms,
        regex_matched=regex_matched,
        error_kind=error_kind,
        error=error_text,
        accepted=accepted,
        tls_expires_at=_certificate_expiry(response.peer_certificate),
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
