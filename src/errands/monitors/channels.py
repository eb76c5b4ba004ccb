"""Notification channels: where a monitor's alerts go. A webhook (signed per Standard Webhooks,
sent through the guarded client) or an Apprise URL (Slack, Telegram, e-mail, ...). Apprise
makes its own connections, outside the address guard, so only an `admin` key may add one."""

import json
import uuid
from datetime import datetime
from typing import Annotated, Literal

import apprise
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from errands.core.auth import ApiKey
from errands.core.delivery import apprise_transport
from errands.core.errors import ErrandsError, NotFound, Unprocessable
from errands.core.http import masked_url
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody, check_target
from errands.monitors import store

__all__ = ["ChannelIn", "ChannelOut", "Forbidden", "TestSent", "apprise_url_shown", "router"]

router = APIRouter(tags=["monitors"])

MAX_TARGET_LENGTH = 2048
CHANNEL_ID_EXAMPLE = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"


class Forbidden(ErrandsError):
    status_code = 403


class ChannelIn(RequestBody):
    """A webhook (`url`) or an Apprise URL (`apprise`), never both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "on-call", "url": "https://hooks.example.com/errands"},
                {"name": "team chat", "apprise": "slack://TokenA/TokenB/TokenC/#ops"},
            ]
        },
    )

    name: str = Field(min_length=1, max_length=100)
    url: str | None = Field(default=None, min_length=1, max_length=MAX_TARGET_LENGTH)
    apprise: str | None = Field(default=None, min_length=1, max_length=MAX_TARGET_LENGTH)

    @model_validator(mode="after")
    def one_target(self) -> "ChannelIn":
        if (self.url is None) == (self.apprise is None):
            raise ValueError('give either "url" (a webhook) or "apprise" (an Apprise URL)')
        return self


class ChannelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": CHANNEL_ID_EXAMPLE,
                    "name": "on-call",
                    "kind": "webhook",
                    "url": "https://hooks.example.com/errands",
                    "apprise": None,
                    "created_at": "2026-12-01T21:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    name: str
    kind: Literal["webhook", "apprise"]
    url: str | None = Field(description="The webhook, with any user:password@ masked")
    apprise: str | None = Field(description="The Apprise URL with its secrets masked")
    created_at: datetime


def apprise_url_shown(target: str) -> str:
    """An Apprise URL as Apprise itself prints it with privacy on (tokens and passwords
    masked)."""
    plugin = apprise.Apprise.instantiate(target)
    if not plugin:
        return target.split("://", 1)[0] + "://…"
    shown: str = plugin.url(privacy=True)  # type: ignore[no-untyped-call]
    return shown


def _channel(row: store.Row) -> ChannelOut:
    webhook = row["kind"] == "webhook"
    return ChannelOut(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        url=masked_url(row["target"]) if webhook else None,
        apprise=None if webhook else apprise_url_shown(row["target"]),
        created_at=row["created_at"],
    )


def _admin_key(request: Request, resources: Resources) -> None:
    if not resources.settings.api_keys_enabled:
        raise Forbidden(
            "Apprise channels need API keys on (ERRANDS_API_KEYS_ENABLED=true) and a key with"
            " the admin scope: Apprise connects outside the address guard"
        )
    key: ApiKey | None = getattr(request.state, "api_key", None)
    if key is None or "admin" not in key.scopes:
        raise Forbidden("only a key with the admin scope may add an Apprise channel")


ResourcesDep = Annotated[Resources, Depends(get_resources)]
NOT_FOUND = {"description": "No channel has this id"}


@router.post(
    "/channels",
    status_code=201,
    response_model=ChannelOut,
    summary="Add a notification channel",
    responses={
        201: {"description": "The channel; name its id in a monitor's channels"},
        403: {"description": "An Apprise channel without an admin key"},
        422: {"description": "A bad webhook URL or Apprise URL"},
    },
)
async def create_channel(body: ChannelIn, request: Request, resources: ResourcesDep) -> ChannelOut:
    """A webhook receives each alert as signed JSON `{"type", "monitor", "incident", "check"}`;
    an Apprise channel receives it as a line of text."""
    if body.url is not None:
        check_target(resources.http, body.url)
        row = await store.create_channel(
            resources.pool, name=body.name, kind="webhook", target=body.url
        )
        return _channel(row)
    assert body.apprise is not None
    _admin_key(request, resources)
    if not apprise_transport.understood(body.apprise):
        raise Unprocessable(
            f"invalid apprise: {body.apprise.split('://', 1)[0]!r} URL not understood"
        )
    row = await store.create_channel(
        resources.pool, name=body.name, kind="apprise", target=body.apprise
    )
    return _channel(row)


class TestSent(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"delivery_id": "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a"}]}
    )

    delivery_id: uuid.UUID = Field(description="The webhook-id of the message queued")


@router.post(
    "/channels/{channel_id}/test",
    status_code=202,
    response_model=TestSent,
    summary="Send a test message to a channel",
    responses={202: {"description": "The message is queued for delivery"}, 404: NOT_FOUND},
)
async def test_channel(channel_id: uuid.UUID, resources: ResourcesDep) -> TestSent:
    """Queue a message of type `channel.test` through the delivery loop, as an alert would go;
    follow it by its delivery id."""
    channel = await store.get_channel(resources.pool, channel_id)
    if channel is None:
        raise NotFound(f"no channel {channel_id}")
    document = {
        "type": "channel.test",
        "channel": {"id": str(channel["id"]), "name": channel["name"]},
    }
    delivery_id = await store.enqueue_test(
        resources.pool,
        channel,
        text=f"Errands: a test message to the channel {channel['name']!r}",
        document=json.dumps(document, separators=(",", ":")).encode(),
    )
    return TestSent(delivery_id=delivery_id)


@router.get(
    "/channels",
    response_model=list[ChannelOut],
    summary="List notification channels",
    responses={200: {"description": "Every channel, oldest first"}},
)
async def list_channels(resources: ResourcesDep) -> list[ChannelOut]:
    """Every channel, with the secrets in its URL masked."""
    return [_channel(row) for row in await store.list_channels(resources.pool)]


@router.delete(
    "/channels/{channel_id}",
    status_code=204,
    summary="Delete a notification channel",
    responses={204: {"description": "Deleted"}, 404: NOT_FOUND},
)
async def delete_channel(channel_id: uuid.UUID, resources: ResourcesDep) -> Response:
    """Remove a channel; monitors that named it stop notifying it."""
    if not await store.delete_channel(resources.pool, channel_id):
        raise NotFound(f"no channel {channel_id}")
    return Response(status_code=204)
