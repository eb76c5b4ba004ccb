"""The "deliveries" loop: claim due deliveries, send each through the guarded client, record it.

Per destination host at most `delivery_max_per_host` requests are in flight; a slot is taken
before the request's timeout starts. One host may hold at most half of the loop's places (sending
or waiting for a slot); its further deliveries are put back for a moment, so a slow host never
fills the loop and never delays deliveries to other hosts.
"""

import asyncio
import functools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import psycopg
import structlog
from multidict import CIMultiDictProxy

from errands.config import Settings
from errands.core import claims
from errands.core.batching import Batcher
from errands.core.delivery import apprise_transport, store
from errands.core.delivery.signing import webhook_headers
from errands.core.http import GuardedClient, OutboundError
from errands.core.metrics import DELIVERIES, DELIVERY_LATENESS
from errands.core.resources import Resources

__all__ = [
    "HostSlots",
    "Outcome",
    "deliver_webhooks",
    "judge_error",
    "judge_response",
    "retry_delay_s",
]

log = structlog.get_logger(__name__)

# Receivers answer a webhook with a short acknowledgement; nothing more of it is kept.
MAX_RESPONSE_BYTES = 1024
# Recording an outcome when the database is briefly unreachable: 0.5 s, 1 s, 2 s, 4 s, 5 s ...
RECORD_RETRY_BASE_S = 0.5
RECORD_RETRY_MAX_S = 5.0
# How long a delivery to a crowded host is put back for (with jitter up to double).
CROWDED_HOST_DEFER_S = 0.5
RETRY_AFTER_STATUSES = frozenset({429, 503})

Written = TypeVar("Written")


def retry_delay_s(attempts_made: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: a random time between half and all of base x 2^(n-1),
    capped at max_s, so deliveries that failed together do not all come back together."""
    ceiling = min(base_s * 2 ** min(attempts_made - 1, 62), max_s)
    return random.uniform(ceiling / 2, ceiling)


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to; `retry_after_s` is the receiver's own wish, when it said one."""

    result: Literal["delivered", "retry", "failed"]
    error: str | None = None
    retry_after_s: float | None = None


def judge_response(status: int, headers: CIMultiDictProxy[str], now: datetime) -> Outcome:
    """2xx delivers; 5xx and 429 are retried (after Retry-After on 429 and 503); 410, other 4xx
    and redirects are final."""
    if 200 <= status < 300:
        return Outcome("delivered")
    error = f"receiver answered {status}"
    if status in RETRY_AFTER_STATUSES:
        return Outcome("retry", error, retry_after_s(headers.get("Retry-After"), now))
    if status >= 500:
        return Outcome("retry", error)
    if 300 <= status < 400:
        return Outcome("failed", f"{error}, a redirect, which is not followed")
    return Outcome("failed", error)


def judge_error(error: OutboundError) -> Outcome:
    # A refused address or a redirect will not change on its own; the rest may be transient.
    if error.kind == "redirect":
        return Outcome("failed", f"receiver answered with a redirect, not followed: {error}")
    if error.kind in ("blocked", "too_large"):
        return Outcome("failed", str(error))
    return Outcome("retry", str(error))


class HostSlots:
    """At most `limit` requests per host at once; a host is crowded once `max_held` deliveries
    to it are sending or waiting for a slot."""

    def __init__(self, limit: int, max_held: int) -> None:
        self.limit = limit
        self.max_held = max(max_held, limit)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._holders: dict[str, int] = {}

    def crowded(self, host: str) -> bool:
        return self._holders.get(host, 0) >= self.max_held

    async def hold(self, host: str, send: Callable[[], Awaitable[Written]]) -> Written:
        """Run `send` once `host` has a free slot."""
        slot = self._slots.setdefault(host, asyncio.Semaphore(self.limit))
        self._holders[host] = self._holders.get(host, 0) + 1
        try:
            async with slot:
                return await send()
        finally:
            self._holders[host] -= 1
            if not self._holders[host]:
                del self._holders[host], self._slots[host]


class _Sender:
    def __init__(self, resources: Resources, owner: str) -> None:
        self._pool = resources.pool
        self._http: GuardedClient = resources.http
        self._settings: Settings = resources.settings
        self._owner = owner
        self._keys = self._settings.webhook_keys
        self._slots = HostSlots(
            self._settings.delivery_max_per_host, self._settings.delivery_max_in_flight // 2
        )
        self._recorder = Batcher(
            functools.partial(store.record_attempts, self._pool, owner),
            name="deliveries:record",
        )
        self._deferrer = Batcher(
            functools.partial(store.defer, self._pool, owner), name="deliveries:defer"
        )

    async def deliver(self, row: claims.Row) -> None:
        """Send one claimed delivery and record how it went, guarded by our lease."""
        delivery_id: uuid.UUID = row["id"]
        if row["transport"] == "apprise":
            await self._notify_apprise(row)
            return
        if row["transport"] != "http":
            await self._record(
                row,
                datetime.now(UTC),
                None,
                None,
                Outcome("failed", f"no transport named {row['transport']!r}"),
            )
            return
        host = urlsplit(row["url"]).hostname or ""
        if self._slots.crowded(host):
            delay_s = random.uniform(CROWDED_HOST_DEFER_S, 2 * CROWDED_HOST_DEFER_S)
            deferred = store.Deferred(delivery_id, delay_s)
            await _until_written(delivery_id, lambda: self._deferrer.submit(deferred))
            return
        await self._attempt(row, host)

    async def _notify_apprise(self, row: claims.Row) -> None:
        """An Apprise URL that Apprise cannot parse fails at once; a failed notification is
        retried like a webhook."""
        attempted_at = datetime.now(UTC)
        _observe_lateness(row, attempted_at)
        started = time.perf_counter()
        if not apprise_transport.understood(row["url"]):
            outcome = Outcome("failed", "Apprise does not understand this URL")
        else:
            error = await apprise_transport.notify(
                row["url"],
                bytes(row["body"]).decode("utf-8", "replace"),
                timeout_s=self._settings.delivery_timeout_s,
            )
            outcome = Outcome("delivered") if error is None else Outcome("retry", error)
        latency_ms = (time.perf_counter() - started) * 1000
        await self._record(row, attempted_at, None, latency_ms, outcome)

    async def _attempt(self, row: claims.Row, host: str) -> None:
        """Send once, holding one of the host's slots for the request alone: recording the
        outcome waits for a group commit, which must not keep the next request to that host
        waiting."""
        attempted_at, status_code, latency_ms, outcome = await self._slots.hold(
            host, functools.partial(self._send, row)
        )
        await self._record(row, attempted_at, status_code, latency_ms, outcome)

    async def _send(self, row: claims.Row) -> tuple[datetime, int | None, float, Outcome]:
        """The request, signed as it leaves, and its outcome."""
        body: bytes = row["body"]
        attempted_at = datetime.now(UTC)
        headers = {
            **row["headers"],
            **webhook_headers(self._keys, row["id"], int(attempted_at.timestamp()), body),
        }
        _observe_lateness(row, attempted_at)
        started = time.perf_counter()
        status_code: int | None = None
        try:
            response = await self._http.fetch(
                row["method"],
                row["url"],
                headers=headers,
                data=body or None,
                timeout_s=self._settings.delivery_timeout_s,
                max_redirects=0,
                max_body_bytes=MAX_RESPONSE_BYTES,
            )
            status_code = response.status
            outcome = judge_response(response.status, response.headers, datetime.now(UTC))
        except OutboundError as error:
            outcome = judge_error(error)
        return attempted_at, status_code, (time.perf_counter() - started) * 1000, outcome

    async def _record(
        self,
        row: claims.Row,
        attempted_at: datetime,
        status_code: int | None,
        latency_ms: float | None,
        outcome: Outcome,
    ) -> None:
        settings = self._settings
        attempts_this_round = row["attempts"] + 1 - row["requeued_after"]
        retry_in_s: float | None = None
        if outcome.result == "retry":
            if attempts_this_round >= settings.delivery_max_attempts:
                outcome = Outcome(
                    "failed", f"gave up after {attempts_this_round} attempts; last: {outcome.error}"
                )
            elif outcome.retry_after_s is not None:
                retry_in_s = min(outcome.retry_after_s, settings.delivery_retry_after_max_s)
            else:
                retry_in_s = retry_delay_s(
                    attempts_this_round,
                    settings.delivery_retry_base_s,
                    settings.delivery_retry_max_s,
                )
        DELIVERIES.labels(source=row["source"], outcome=outcome.result).inc()
        record = store.AttemptRecord(
            id=row["id"],
            result=outcome.result,
            attempted_at=attempted_at,
            status_code=status_code,
            latency_ms=latency_ms,
            error=outcome.error,
            retry_in_s=retry_in_s,
        )
        if not await _until_written(row["id"], lambda: self._recorder.submit(record)):
            log.warning("delivery_lease_lost_before_recording", id=str(row["id"]))
        elif outcome.result == "retry":
            log.info(
                "delivery_retry_scheduled",
                id=str(row["id"]),
                error=outcome.error,
                retry_in_s=retry_in_s,
            )
        elif outcome.result == "failed":
            log.warning(
                "delivery_failed", id=str(row["id"]), source=row["source"], error=outcome.error
            )


def _observe_lateness(row: claims.Row, attempted_at: datetime) -> None:
    if row["attempts"] == 0:
        lateness_s = (attempted_at - row["scheduled_at"]).total_seconds()
        DELIVERY_LATENESS.labels(source=row["source"]).observe(max(lateness_s, 0.0))


async def _until_written(
    delivery_id: uuid.UUID, write: Callable[[], Awaitable[Written]]
) -> Written:
    """Try `write` until the database takes it. An outcome left unrecorded would have the
    delivery sent again when the lease runs out; the claim loop renews the lease meanwhile, and
    cancels this on shutdown."""
    failures = 0
    while True:
        try:
            return await write()
        except psycopg.OperationalError as error:
            failures += 1
            delay_s = min(RECORD_RETRY_BASE_S * 2 ** min(failures - 1, 8), RECORD_RETRY_MAX_S)
            log.warning(
                "delivery_record_failed", id=str(delivery_id), error=str(error), retry_in_s=delay_s
            )
            await asyncio.sleep(delay_s)


async def deliver_webhooks(resources: Resources, stop: asyncio.Event) -> None:
    """The "deliveries" loop: send due deliveries until `stop`, then finish or release those
    in hand."""
    settings = resources.settings
    owner = claims.new_owner()
    queue = claims.ClaimQueue(
        table="deliveries",
        channel=store.CHANNEL,
        lease=timedelta(seconds=settings.delivery_lease_s),
        batch_size=settings.delivery_batch_size,
        max_in_flight=settings.delivery_max_in_flight,
        poll_interval_s=settings.delivery_poll_interval_s,
        lookahead=timedelta(seconds=settings.delivery_lookahead_s),
    )
    await claims.run_claim_loop(
        queue,
        resources.pool,
        resources.database_url,
        _Sender(resources, owner).deliver,
        stop,
        owner=owner,
        grace_s=settings.shutdown_grace_s,
    )
