"""Webhook timers: `POST /timer` sets one, `GET /timer/{id}` reads it, `DELETE` cancels it."""

import uuid
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator

from errands.core.errors import Conflict, NotFound, Unprocessable
from errands.core.http import BlockedTarget
from errands.core.openapi import answer, request_example
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody
from errands.timers import store

__all__ = ["TimerCreated", "TimerRequest", "TimerView", "router"]

router = APIRouter(tags=["timers"])

MAX_URL_CHARS = 2048

# Strict: 1.5, true and "3" are refused rather than quietly turned into whole numbers.
DurationPart = Annotated[int, Field(default=0, ge=0, strict=True)]


class TimerRequest(RequestBody):
    """When to fire (the parts add up; missing ones count as 0) and where to send the webhook."""

    hours: DurationPart = 0
    minutes: DurationPart = 0
    seconds: DurationPart = 0
    url: Annotated[str, Field(strict=True, max_length=MAX_URL_CHARS)]

    @field_validator("url")
    @classmethod
    def url_is_http(cls, url: str) -> str:
        if not url.isprintable() or " " in url or "\\" in url:
            raise ValueError("url must not contain spaces, backslashes or control characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")
        _ = parts.port  # raises ValueError, naming the problem, for a port out of range
        return url

    @property
    def total_seconds(self) -> int:
        return self.hours * 3600 + self.minutes * 60 + self.seconds


class TimerCreated(BaseModel):
    id: uuid.UUID
    time_left: int = Field(description="Seconds until the webhook is sent.")


class TimerView(BaseModel):
    id: uuid.UUID
    time_left: int = Field(description="Seconds until the webhook is sent; 0 once expired.")
    status: Literal["pending", "firing", "fired", "failed", "cancelled"]
    url: str
    fire_at: datetime
    attempts: int = Field(description="Webhook requests made so far.")
    fired_at: datetime | None = Field(description="When the accepted webhook was sent.")
    last_error: str | None
    created_at: datetime


ResourcesDep = Annotated[Resources, Depends(get_resources)]
TIMER_VIEW_EXAMPLE = {
    "id": "5f0c8a4e-1d2b-4c3a-9e8f-7a6b5c4d3e2f",
    "time_left": 0,
    "status": "fired",
    "url": "https://example.com/hooks/reminder",
    "fire_at": "2026-12-01T12:00:00Z",
    "attempts": 1,
    "fired_at": "2026-12-01T12:00:00.012Z",
    "last_error": None,
    "created_at": "2026-12-01T08:00:00Z",
}


@router.post(
    "/timer",
    summary="Set a timer",
    response_model=TimerCreated,
    openapi_extra=request_example(
        {"hours": 4, "minutes": 0, "seconds": 1, "url": "https://example.com/hooks/reminder"}
    ),
    responses={
        200: answer({"id": "5f0c8a4e-1d2b-4c3a-9e8f-7a6b5c4d3e2f", "time_left": 14401}),
        422: answer(
            {"detail": "minute: unknown field; send only the fields this route documents"},
            "Bad input, the field named",
        ),
    },
)
async def create_timer(request: TimerRequest, resources: ResourcesDep) -> dict[str, object]:
    """Set a timer; when it expires, `POST <url>` is sent with JSON `{"id": "<timer id>"}`."""
    settings = resources.settings
    total_s = request.total_seconds
    if total_s > settings.timer_max_total_s:
        raise Unprocessable(
            f"the timer is {total_s} seconds long; the longest allowed is "
            f"{settings.timer_max_total_s} seconds"
        )
    try:
        resources.http.check_url(request.url)
    except BlockedTarget as error:
        raise Unprocessable(f"url is not allowed: {error}") from None
    timer_id = await store.create_timer(
        resources.pool, request.url, total_s, wake_firers=total_s <= settings.timer_poll_interval_s
    )
    return {"id": timer_id, "time_left": total_s}


@router.get(
    "/timer/{timer_id}",
    summary="Read a timer",
    response_model=TimerView,
    responses={200: answer(TIMER_VIEW_EXAMPLE)},
)
async def get_timer(timer_id: uuid.UUID, resources: ResourcesDep) -> dict[str, object]:
    """A timer's seconds left (0 once expired) and how its webhook went."""
    timer = await store.get_timer(resources.pool, timer_id)
    if timer is None:
        raise NotFound(f"no timer with id {timer_id}")
    return timer


@router.delete(
    "/timer/{timer_id}",
    summary="Cancel a timer",
    response_model=TimerView,
    responses={
        200: answer(TIMER_VIEW_EXAMPLE | {"status": "cancelled", "fired_at": None, "attempts": 0}),
        409: answer(
            {"detail": "timer 5f0c8a4e-1d2b-4c3a-9e8f-7a6b5c4d3e2f is already fired"},
            "The timer was already sent, failed, cancelled, or is being sent right now",
        ),
    },
)
async def cancel_timer(timer_id: uuid.UUID, resources: ResourcesDep) -> dict[str, object]:
    """Cancel a pending timer so its webhook is never sent."""
    cancelled, timer = await store.cancel_timer(resources.pool, timer_id)
    if timer is None:
        raise NotFound(f"no timer with id {timer_id}")
    if not cancelled:
        if timer["status"] in ("pending", "firing"):
            raise Conflict(
                f"timer {timer_id} is being fired right now; it can no longer be cancelled"
            )
        raise Conflict(f"timer {timer_id} is already {timer['status']}")
    return timer
