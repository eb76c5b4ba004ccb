"""The timer firer: claims due timers through the scheduling core and POSTs their webhooks.

Delivery is at-least-once: a firer that dies after sending but before recording leaves the timer
leased, and another firer sends it again when the lease runs out. Each request carries the timer
id as `Idempotency-Key` so receivers can drop such repeats.
"""

import asyncio
import functools
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import psycopg
import structlog

from errands.core import claims
from errands.core.batching import Batcher
from errands.core.http import GuardedClient, OutboundError
from errands.core.metrics import TIMER_LATENESS, TIMERS_FIRED, TIMERS_PENDING
from errands.core.resources import Resources
from errands.timers import store

__all__ = [
    "SIGNATURE_HEADER",
    "Outcome",
    "fire_due_timers",
    "judge_response",
    "retry_delay_s",
    "sign",
]

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "Errands-Signature"
PENDING_COUNT_INTERVAL_S = 5.0
# Receivers answer a webhook with a short acknowledgement; nothing more of it is kept.
MAX_RESPONSE_BYTES = 1024
# Recording an outcome when the database is briefly unreachable: 0.5 s, 1 s, 2 s, 4 s, 5 s ...
RECORD_RETRY_BASE_S = 0.5
RECORD_RETRY_MAX_S = 5.0

Written = TypeVar("Written")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the time is signed too, so a
    receiver can refuse an old request replayed by someone who captured it."""
    message = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay_s(attempts_made: int, base_s: float, max_s: float) -> float:
    """Exponential backoff: base, 2 x base, 4 x base ... after the 1st, 2nd, 3rd failure."""
    return float(min(base_s * 2 ** min(attempts_made - 1, 62), max_s))


@dataclass(frozen=True)
class Outcome:
    """What one webhook request came to: delivered, worth another try, or final failure."""

    result: Literal["fired", "retry", "failed"]
    error: str | None = None


def judge_response(status: int) -> Outcome:
    """2xx delivers; 5xx may pass, so it is retried; any other answer is final."""
    if 200 <= status < 300:
        return Outcome("fired")
    if status >= 500:
        return Outcome("retry", f"receiver answered {status}")
    return Outcome("failed", f"receiver answered {status}")


def judge_error(error: OutboundError) -> Outcome:
    # A refused address or a redirect will not change on its own; the rest may be transient.
    if error.kind == "redirect":
        return Outcome("failed", f"receiver answered with a redirect, not followed: {error}")
    if error.kind in ("blocked", "too_large"):
        return Outcome("failed", str(error))
    return Outcome("retry", str(error))


class _Firer:
    def __init__(
        self, resources: Resources, owner: str, recorder: Batcher[store.FiredTimer, bool]
    ) -> None:
        self._resources = resources
        self._settings = resources.settings
        self._http: GuardedClient = resources.http
        self._owner = owner
        self._recorder = recorder

    async def fire(self, timer: claims.Row) -> None:
        """Send one timer's webhook and record the outcome, guarded by our lease."""
        timer_id: uuid.UUID = timer["id"]
        body = json.dumps({"id": str(timer_id)}).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(timer_id)}
        secret = self._settings.timer_webhook_secret
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
        sent_at = datetime.now(UTC)
        if timer["attempts"] == 0:
            TIMER_LATENESS.observe(max((sent_at - timer["fire_at"]).total_seconds(), 0.0))
        try:
            response = await self._http.fetch(
                "POST",
                timer["url"],
                headers=headers,
                data=body,
                timeout_s=self._settings.timer_webhook_timeout_s,
                max_redirects=0,
                max_body_bytes=MAX_RESPONSE_BYTES,
            )
            outcome = judge_response(response.status)
        except OutboundError as error:
            outcome = judge_error(error)
        await self._record(timer, sent_at, outcome)

    async def _record(self, timer: claims.Row, sent_at: datetime, outcome: Outcome) -> None:
        pool, owner, timer_id = self._resources.pool, self._owner, timer["id"]
        attempts = timer["attempts"] + 1
        error = outcome.error or ""
        if outcome.result == "retry" and attempts >= self._settings.timer_max_attempts:
            outcome = Outcome("failed", f"gave up after {attempts} attempts; last: {error}")
        TIMERS_FIRED.labels(outcome=outcome.result).inc()
        if outcome.result == "fired":
            # Delivered webhooks are recorded in batches: one UPDATE for all that finished
            # while the previous one ran.
            fired = store.FiredTimer(timer_id, sent_at)
            if not await _until_written(timer_id, lambda: self._recorder.submit(fired)):
                log.warning("timer_lease_lost_before_recording", id=str(timer_id))
        elif outcome.result == "retry":
            delay_s = retry_delay_s(
                attempts, self._settings.timer_retry_base_s, self._settings.timer_retry_max_s
            )
            delay = timedelta(seconds=delay_s)
            await _until_written(
                timer_id, lambda: store.schedule_retry(pool, owner, timer_id, delay, error)
            )
            log.info("timer_retry_scheduled", id=str(timer_id), attempts=attempts, error=error)
        else:
            await _until_written(
                timer_id, lambda: store.mark_failed(pool, owner, timer_id, outcome.error or "")
            )
            log.warning("timer_failed", id=str(timer_id), attempts=attempts, error=outcome.error)


async def _until_written(timer_id: uuid.UUID, write: Callable[[], Awaitable[Written]]) -> Written:
    """Try `write` until the database takes it. An outcome left unrecorded would have the webhook
    sent again when the lease runs out; the claim loop renews the lease meanwhile, and cancels
    this on shutdown."""
    failures = 0
    while True:
        try:
            return await write()
        except psycopg.OperationalError as error:
            failures += 1
            delay_s = retry_delay_s(failures, RECORD_RETRY_BASE_S, RECORD_RETRY_MAX_S)
            log.warning(
                "timer_record_failed", id=str(timer_id), error=str(error), retry_in_s=delay_s
            )
            await asyncio.sleep(delay_s)


async def _count_pending(resources: Resources) -> None:
    while True:
        try:
            TIMERS_PENDING.set(await store.count_pending(resources.pool))
        except psycopg.OperationalError as error:
            # The gauge keeps its last value; the next count may find the database back.
            log.warning("timers_pending_count_failed", error=str(error))
        await asyncio.sleep(PENDING_COUNT_INTERVAL_S)


async def fire_due_timers(resources: Resources, stop: asyncio.Event) -> None:
    """The "timers" loop: fire due timers until `stop`, then finish or release those in hand."""
    settings = resources.settings
    owner = claims.new_owner()
    queue = claims.ClaimQueue(
        table="timers",
        channel=store.CHANNEL,
        lease=timedelta(seconds=settings.timer_lease_s),
        batch_size=settings.timer_batch_size,
        max_in_flight=settings.timer_max_in_flight,
        poll_interval_s=settings.timer_poll_interval_s,
    )
    recorder = Batcher(
        functools.partial(store.mark_fired, resources.pool, owner), name="timers:record-fired"
    )
    firer = _Firer(resources, owner, recorder)
    counting = asyncio.create_task(_count_pending(resources), name="timers:count-pending")
    try:
        await claims.run_claim_loop(
            queue,
            resources.pool,
            resources.database_url,
            firer.fire,
            stop,
            owner=owner,
            grace_s=settings.shutdown_grace_s,
        )
    finally:
        counting.cancel()
        await asyncio.gather(counting, return_exceptions=True)
