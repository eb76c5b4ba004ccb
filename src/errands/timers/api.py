"""Webhook timers: set one, read, list, reschedule, retry or cancel it, and see its attempts."""

import hashlib
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from errands.core.errors import Conflict, NotFound, Unprocessable
from errands.core.openapi import answer
from errands.core.paging import BadCursor
from errands.core.resources import Resources, get_resources
from errands.core.routing import PlainRoute
from errands.core.validation import RequestBody, check_target
from errands.timers import store
from errands.timers.webhook_options import WebhookOptions

__all__ = [
    "TimerAttempt",
    "TimerCreated",
    "TimerPage",
    "TimerRequest",
    "TimerReschedule",
    "TimerView",
    "read_timer_route",
    "router",
]

TAGS = ["timers"]  # also the API key scope these routes need
router = APIRouter(tags=list(TAGS))

MAX_IDEMPOTENCY_KEY_CHARS = 255

# Strict: 1.5, true and "3" are refused rather than quietly turned into whole numbers.
DurationPart = Annotated[int, Field(default=0, ge=0, strict=True)]
ListedStatus = Literal["pending", "fired", "failed", "cancelled"]

NOT_FOUND = {"description": "No timer with this id", "content": {"application/json": {
    "example": {"detail": "no timer with id 8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93"}}}}  # fmt: skip
BAD_INPUT = {"description": "Bad input, the field named", "content": {"application/json": {
    "example": {"detail": [{"loc": ["body", "minute"], "msg": "Extra inputs are not permitted",
                            "type": "extra_forbidden"}]}}}}  # fmt: skip


def _conflict(example: str) -> dict[str, Any]:
    return {
        "description": "The timer is not in a state that allows this",
        "content": {"application/json": {"example": {"detail": example}}},
    }


class TimerRequest(WebhookOptions):
    """When to fire (the parts add up; missing ones count as 0), where to send the webhook, and
    optionally how: method, extra headers and a JSON body instead of `{"id": "<timer id>"}`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"hours": 4, "minutes": 0, "seconds": 1, "url": "https://someserver.com"},
                {
                    "minutes": 30,
                    "url": "https://example.com/hooks/reminder",
                    "method": "PUT",
                    "headers": {"Authorization": "Bearer abc123"},
                    "body": {"reminder": "invoice 2041", "attempt": 1},
                },
            ]
        },
    )

    hours: DurationPart = 0
    minutes: DurationPart = 0
    seconds: DurationPart = 0

    @property
    def total_seconds(self) -> int:
        return self.hours * 3600 + self.minutes * 60 + self.seconds

    def digest(self) -> bytes:
        """What makes two requests the same for an Idempotency-Key: the fields as sent."""
        fields = self.model_dump(mode="json", exclude_unset=True)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()


class TimerReschedule(RequestBody):
    """A new delay, from now, for a pending timer."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"minutes": 10}]})

    hours: DurationPart = 0
    minutes: DurationPart = 0
    seconds: DurationPart = 0

    @property
    def total_seconds(self) -> int:
        return self.hours * 3600 + self.minutes * 60 + self.seconds


class TimerCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93", "time_left": 14401}]
        }
    )

    id: uuid.UUID
    time_left: int = Field(description="Seconds until the webhook is sent.")


class TimerView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93",
                    "time_left": 0,
                    "status": "fired",
                    "url": "https://someserver.com",
                    "method": "POST",
                    "fire_at": "2026-12-01T12:00:01Z",
                    "attempts": 1,
                    "next_attempt_at": None,
                    "fired_at": "2026-12-01T12:00:01.004Z",
                    "last_status": 200,
                    "last_error": None,
                    "created_at": "2026-12-01T08:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    time_left: int = Field(description="Seconds until the webhook is sent; 0 once expired.")
    status: Literal["pending", "firing", "fired", "failed", "cancelled"]
    url: str
    method: str
    fire_at: datetime
    attempts: int = Field(description="Webhook requests made so far.")
    next_attempt_at: datetime | None = Field(description="When the next request is due.")
    fired_at: datetime | None = Field(description="When the accepted webhook was sent.")
    last_status: int | None = Field(description="The receiver's last HTTP status.")
    last_error: str | None
    created_at: datetime


class TimerPage(BaseModel):
    timers: list[TimerView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class TimerAttempt(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "attempt": 2,
                    "attempted_at": "2026-12-01T12:00:02.1Z",
                    "status_code": 429,
                    "latency_ms": 3.2,
                    "error": "receiver answered 429",
                }
            ]
        }
    )

    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str | None


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def _timer_or_404(resources: Resources, timer_id: uuid.UUID) -> dict[str, Any]:
    timer = await store.get_timer(resources.pool, timer_id)
    if timer is None:
        raise NotFound(f"no timer with id {timer_id}")
    return timer


@router.post(
    "/timer",
    summary="Set a timer",
    response_model=TimerCreated,
    responses={
        409: _conflict("Idempotency-Key 'order-2041' was used for a different request"),
        422: BAD_INPUT,
    },
)
async def create_timer(
    request: TimerRequest,
    resources: ResourcesDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="Retry safely: the same key and body within 24 h return the same "
            "timer; the same key with another body is a 409.",
        ),
    ] = None,
) -> dict[str, object]:
    """Set a timer; when it expires, `POST <url>` is sent with JSON `{"id": "<timer id>"}`
    (or the method, headers and body given)."""
    settings = resources.settings
    total_s = request.total_seconds
    if total_s > settings.timer_max_total_s:
        raise Unprocessable(
            f"the timer is {total_s} seconds long; the longest allowed is "
            f"{settings.timer_max_total_s} seconds"
        )
    check_target(resources.http, request.url)
    timer = store.NewTimer(
        url=request.url,
        delay_s=total_s,
        method=request.method,
        headers=request.headers,
        body=request.webhook_body(),
        id=uuid.uuid4(),
    )
    wake_within_s = settings.delivery_poll_interval_s
    if idempotency_key is None:
        await store.create_timer(resources.pool, timer, wake_within_s=wake_within_s)
        return {"id": timer.id, "time_left": total_s}
    try:
        timer_id, created = await store.create_timer_once(
            resources.pool,
            timer,
            key=idempotency_key,
            digest=request.digest(),
            wake_within_s=wake_within_s,
        )
    except store.IdempotencyConflict:
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was used for a different request"
        ) from None
    if created:
        return {"id": timer_id, "time_left": total_s}
    existing = await _timer_or_404(resources, timer_id)
    return {"id": timer_id, "time_left": existing["time_left"]}


@router.get(
    "/timers",
    summary="List timers",
    response_model=TimerPage,
    responses={
        200: answer(
            {
                "timers": [
                    {
                        "id": "8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93",
                        "time_left": 120,
                        "status": "pending",
                        "url": "https://someserver.com",
                        "method": "POST",
                        "fire_at": "2026-12-01T12:02:00Z",
                        "attempts": 0,
                        "next_attempt_at": None,
                        "fired_at": None,
                        "last_status": None,
                        "last_error": None,
                        "created_at": "2026-12-01T12:00:00Z",
                    }
                ],
                "next_cursor": "MjAyNi0xMi0wMVQxMjowMDowMFo",
            }
        ),
        422: {"description": "A bad status, limit or cursor"},
    },
)
async def list_timers(
    resources: ResourcesDep,
    status: Annotated[ListedStatus | None, Query(description="Only timers in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, object]:
    """Timers newest first, a page at a time: pass `next_cursor` back as `cursor`."""
    try:
        timers, next_cursor = await store.list_timers(
            resources.pool, status=status, limit=limit, cursor=cursor
        )
    except BadCursor as error:
        raise Unprocessable(str(error)) from None
    return {"timers": timers, "next_cursor": next_cursor}


@router.get(
    "/timer/{timer_id}",
    summary="Read a timer",
    response_model=TimerView,
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def get_timer(timer_id: uuid.UUID, resources: ResourcesDep) -> dict[str, object]:
    """A timer's seconds left (0 once expired) and how its webhook went."""
    return await _timer_or_404(resources, timer_id)


async def _read_timer(request: Request) -> Response:
    timer = await _timer_or_404(request.app.state.resources, request.path_params["timer_id"])
    return Response(
        TimerView.model_validate(timer).model_dump_json(), media_type="application/json"
    )


# GET /timer/{id}, which clients poll, for ids spelled as this API writes them; get_timer
# answers the other spellings and documents the route.
read_timer_route = PlainRoute("/timer/{timer_id:uuid}", _read_timer, methods=["GET"], tags=TAGS)


@router.get(
    "/timer/{timer_id}/attempts",
    summary="A timer's webhook attempts",
    response_model=list[TimerAttempt],
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def get_timer_attempts(timer_id: uuid.UUID, resources: ResourcesDep) -> list[dict[str, Any]]:
    """The last 20 requests made for this timer, newest first: time, status, latency, error."""
    await _timer_or_404(resources, timer_id)
    return await store.get_attempts(resources.pool, timer_id)


@router.post(
    "/timer/{timer_id}/retry",
    summary="Retry a failed timer",
    response_model=TimerView,
    responses={
        404: NOT_FOUND,
        409: _conflict("timer 8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93 is fired, not failed"),
        422: BAD_INPUT,
    },
)
async def retry_timer(timer_id: uuid.UUID, resources: ResourcesDep) -> dict[str, object]:
    """Send a failed timer's webhook again now, with a fresh round of attempts."""
    requeued, timer = await store.retry_timer(resources.pool, timer_id)
    if timer is None:
        raise NotFound(f"no timer with id {timer_id}")
    if not requeued:
        raise Conflict(f"timer {timer_id} is {timer['status']}, not failed")
    return timer


@router.patch(
    "/timer/{timer_id}",
    summary="Reschedule a pending timer",
    response_model=TimerView,
    responses={
        404: NOT_FOUND,
        409: _conflict("timer 8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93 is already fired"),
        422: BAD_INPUT,
    },
)
async def reschedule_timer(
    timer_id: uuid.UUID, request: TimerReschedule, resources: ResourcesDep
) -> dict[str, object]:
    """Fire a pending timer after the given delay from now instead."""
    total_s = request.total_seconds
    if total_s > resources.settings.timer_max_total_s:
        raise Unprocessable(
            f"the timer is {total_s} seconds long; the longest allowed is "
            f"{resources.settings.timer_max_total_s} seconds"
        )
    moved, timer = await store.reschedule_timer(resources.pool, timer_id, total_s)
    if timer is None:
        raise NotFound(f"no timer with id {timer_id}")
    if not moved:
        raise Conflict(_not_pending(timer_id, timer["status"]))
    return timer


@router.delete(
    "/timer/{timer_id}",
    summary="Cancel a timer",
    response_model=TimerView,
    responses={
        404: NOT_FOUND,
        409: _conflict("timer 8f0c2a4e-3b1d-4c55-9e8a-2f7d6b1c0a93 is being fired right now"),
        422: BAD_INPUT,
    },
)
async def cancel_timer(timer_id: uuid.UUID, resources: ResourcesDep) -> dict[str, object]:
    """Cancel a pending timer. A 200 means its webhook will never be sent; a timer being sent
    right now is a 409."""
    cancelled, timer = await store.cancel_timer(resources.pool, timer_id)
    if timer is None:
        raise NotFound(f"no timer with id {timer_id}")
    if not cancelled:
        raise Conflict(_not_pending(timer_id, timer["status"]))
    return timer


def _not_pending(timer_id: uuid.UUID, status: str) -> str:
    if status in ("pending", "firing"):
        return f"timer {timer_id} is being fired right now; it can no longer be changed"
    return f"timer {timer_id} is already {status}"
