"""Recurring schedules: `POST /schedules` with a cron expression and time zone, or `every_s`;
read, list, change, pause, resume and delete them. Each occurrence is a delivery of its own."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from errands.core.errors import NotFound, Unprocessable
from errands.core.paging import BadCursor
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody, check_http_url, check_target
from errands.timers import store
from errands.timers.schedules import check_cron, check_timezone, next_occurrence
from errands.timers.webhook_options import (
    WebhookMethod,
    WebhookOptions,
    WebhookUrl,
    check_headers,
    encoded_body,
)

__all__ = ["ScheduleChange", "ScheduleRequest", "ScheduleView", "router"]

# Listed under timers too, whose API key scope they need.
router = APIRouter(tags=["timers", "schedules"])

MAX_EVERY_S = 365 * 24 * 3600
EverySeconds = Annotated[int, Field(ge=1, le=MAX_EVERY_S, strict=True)]
CronText = Annotated[str, Field(max_length=200)]
ZoneName = Annotated[str, Field(max_length=64)]

EXAMPLE_ID = "3c9b5a0e-8d2f-4e61-b7a4-0f1e2d3c4b5a"
NOT_FOUND = {"description": "No schedule with this id", "content": {"application/json": {
    "example": {"detail": f"no schedule with id {EXAMPLE_ID}"}}}}  # fmt: skip
BAD_INPUT = {"description": "Bad input: an invalid cron expression, time zone or field",
             "content": {"application/json": {"example": {"detail": [
                 {"loc": ["body"], "msg": "Value error, cron '61 * * * *' is not valid: Bad minute",
                  "type": "value_error"}]}}}}  # fmt: skip


class ScheduleRequest(WebhookOptions):
    """A cron expression read in `timezone` (IANA name, default UTC), or a fixed `every_s`; and
    where and how to send each occurrence's webhook (default body: `{"schedule_id",
    "scheduled_for"}`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "cron": "*/5 * * * *",
                    "timezone": "Europe/Amsterdam",
                    "url": "https://example.com/tick",
                },
                {"every_s": 3600, "url": "https://example.com/hourly", "body": {"job": "report"}},
            ]
        },
    )

    cron: CronText | None = None
    timezone: ZoneName = "UTC"
    every_s: EverySeconds | None = None

    @field_validator("cron")
    @classmethod
    def cron_is_valid(cls, cron: str | None) -> str | None:
        return None if cron is None else check_cron(cron)

    @field_validator("timezone")
    @classmethod
    def timezone_is_known(cls, timezone: str) -> str:
        return check_timezone(timezone)

    @model_validator(mode="after")
    def one_way_to_recur(self) -> Self:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give exactly one of cron and every_s")
        return self


class ScheduleChange(RequestBody):
    """Fields to change; giving `cron` drops `every_s` and the other way round. The next
    occurrence is worked out again from now."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"cron": "0 9 * * 1-5", "timezone": "Europe/Amsterdam"}]},
    )

    cron: CronText | None = None
    timezone: ZoneName | None = None
    every_s: EverySeconds | None = None
    url: WebhookUrl | None = None
    method: WebhookMethod | None = None
    headers: dict[str, str] | None = None
    body: JsonValue = None

    @field_validator("cron")
    @classmethod
    def cron_is_valid(cls, cron: str | None) -> str | None:
        return None if cron is None else check_cron(cron)

    @field_validator("timezone")
    @classmethod
    def timezone_is_known(cls, timezone: str | None) -> str | None:
        return None if timezone is None else check_timezone(timezone)

    @field_validator("url")
    @classmethod
    def url_is_http(cls, url: str | None) -> str | None:
        return None if url is None else check_http_url(url)

    @field_validator("headers")
    @classmethod
    def headers_are_sendable(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        return None if headers is None else check_headers(headers)

    @model_validator(mode="after")
    def one_way_to_recur(self) -> Self:
        if self.cron is not None and self.every_s is not None:
            raise ValueError("give at most one of cron and every_s")
        return self


SCHEDULE_EXAMPLE: dict[str, JsonValue] = {
    "id": EXAMPLE_ID,
    "cron": "*/5 * * * *",
    "timezone": "Europe/Amsterdam",
    "every_s": None,
    "url": "https://example.com/tick",
    "method": "POST",
    "headers": {},
    "paused": False,
    "next_at": "2026-12-01T12:05:00Z",
    "fired": 12,
    "last_fired_at": "2026-12-01T12:00:00.003Z",
    "created_at": "2026-12-01T11:00:00Z",
}


class ScheduleView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SCHEDULE_EXAMPLE]})

    id: uuid.UUID
    cron: str | None
    timezone: str
    every_s: int | None
    url: str
    method: str
    headers: dict[str, str]
    paused: bool
    next_at: datetime = Field(description="The next occurrence (also while paused, as it stands).")
    fired: int = Field(description="Occurrences queued for delivery so far.")
    last_fired_at: datetime | None
    created_at: datetime


class SchedulePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"schedules": [SCHEDULE_EXAMPLE], "next_cursor": None}]}
    )

    schedules: list[ScheduleView]
    next_cursor: str | None


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def _upcoming(row: dict[str, Any], now: datetime) -> datetime:
    return next_occurrence(
        cron=row["cron"], timezone=row["timezone"], every_s=row["every_s"], anchor=now, after=now
    )


@router.post(
    "/schedules",
    summary="Create a recurring schedule",
    status_code=201,
    response_model=ScheduleView,
    responses={422: BAD_INPUT},
)
async def create_schedule(request: ScheduleRequest, resources: ResourcesDep) -> dict[str, Any]:
    """Send a webhook at every occurrence of a cron expression (in a time zone) or every N
    seconds. Occurrences missed while no worker ran fire once when one starts."""
    check_target(resources.http, request.url)
    schedule_id = uuid.uuid4()
    async with resources.pool.connection() as conn:
        now = await store.database_now(conn)
    values: dict[str, Any] = {
        "id": schedule_id,
        "cron": request.cron,
        "timezone": request.timezone,
        "every_s": request.every_s,
        "url": request.url,
        "method": request.method,
        "headers": request.headers,
        "body": request.webhook_body(),
    }
    values["next_at"] = _upcoming(values, now)
    return await store.create_schedule(resources.pool, values)


@router.get(
    "/schedules",
    summary="List schedules",
    response_model=SchedulePage,
    responses={422: {"description": "A bad limit or cursor"}},
)
async def list_schedules(
    resources: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, object]:
    """Schedules newest first, a page at a time: pass `next_cursor` back as `cursor`."""
    try:
        rows, next_cursor = await store.list_schedules(resources.pool, limit=limit, cursor=cursor)
    except BadCursor as error:
        raise Unprocessable(str(error)) from None
    return {"schedules": rows, "next_cursor": next_cursor}


@router.get(
    "/schedules/{schedule_id}",
    summary="Read a schedule",
    response_model=ScheduleView,
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def get_schedule(schedule_id: uuid.UUID, resources: ResourcesDep) -> dict[str, Any]:
    """A schedule, its next occurrence and how many it has fired."""
    schedule = await store.get_schedule(resources.pool, schedule_id)
    if schedule is None:
        raise NotFound(f"no schedule with id {schedule_id}")
    return schedule


@router.patch(
    "/schedules/{schedule_id}",
    summary="Change a schedule",
    response_model=ScheduleView,
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def change_schedule(
    schedule_id: uuid.UUID, change: ScheduleChange, resources: ResourcesDep
) -> dict[str, Any]:
    """Change when or where a schedule fires; its next occurrence is worked out again from now."""
    if change.url is not None:
        check_target(resources.http, change.url)
    given = change.model_fields_set

    def changed(current: dict[str, Any], now: datetime) -> dict[str, Any]:
        values = {
            name: current[name]
            for name in ("id", "cron", "timezone", "every_s", "url", "method", "headers", "body")
        }
        for name in given & {"timezone", "url", "method", "headers"}:
            if getattr(change, name) is not None:
                values[name] = getattr(change, name)
        if change.cron is not None:
            values |= {"cron": change.cron, "every_s": None}
        if change.every_s is not None:
            values |= {"every_s": change.every_s, "cron": None}
        if "body" in given:
            values["body"] = encoded_body(change.body, values["method"])
        elif values["method"] == "GET":
            values["body"] = b""
        values["next_at"] = _upcoming(values, now)
        return values

    try:
        schedule = await store.update_schedule(resources.pool, schedule_id, changed)
    except ValueError as error:  # a body that the new method cannot carry
        raise Unprocessable(str(error)) from None
    if schedule is None:
        raise NotFound(f"no schedule with id {schedule_id}")
    return schedule


@router.post(
    "/schedules/{schedule_id}/pause",
    summary="Pause a schedule",
    response_model=ScheduleView,
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def pause_schedule(schedule_id: uuid.UUID, resources: ResourcesDep) -> dict[str, Any]:
    """Stop firing until resumed; occurrences while paused are skipped, not queued."""
    schedule = await store.set_schedule_paused(resources.pool, schedule_id, paused=True)
    if schedule is None:
        raise NotFound(f"no schedule with id {schedule_id}")
    return schedule


@router.post(
    "/schedules/{schedule_id}/resume",
    summary="Resume a paused schedule",
    response_model=ScheduleView,
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def resume_schedule(schedule_id: uuid.UUID, resources: ResourcesDep) -> dict[str, Any]:
    """Fire again from the next occurrence after now."""
    schedule = await store.set_schedule_paused(
        resources.pool, schedule_id, paused=False, next_at=_upcoming
    )
    if schedule is None:
        raise NotFound(f"no schedule with id {schedule_id}")
    return schedule


@router.delete(
    "/schedules/{schedule_id}",
    summary="Delete a schedule",
    status_code=204,
    response_class=Response,
    responses={404: NOT_FOUND, 422: BAD_INPUT},
)
async def delete_schedule(schedule_id: uuid.UUID, resources: ResourcesDep) -> Response:
    """Delete a schedule; occurrences already queued are delivered as usual."""
    if not await store.delete_schedule(resources.pool, schedule_id):
        raise NotFound(f"no schedule with id {schedule_id}")
    return Response(status_code=204)
