"""Where and how a timer's or a schedule's webhook is sent: the request fields both share."""

import json
import re
from typing import Annotated, Literal, Self

from pydantic import Field, JsonValue, field_validator, model_validator

from errands.core.validation import RequestBody, check_http_url

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADERS",
    "WebhookMethod",
    "WebhookOptions",
    "check_headers",
]

MAX_URL_CHARS = 2048
MAX_HEADERS = 32
MAX_HEADER_VALUE_CHARS = 4096
MAX_BODY_BYTES = 64 * 1024
# Hop-by-hop headers belong to one connection, Host and Content-Length to the request as sent,
# and the webhook-* and Idempotency-Key headers are the ones Errands sets on every attempt.
FORBIDDEN_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")

WebhookMethod = Literal["POST", "PUT", "PATCH", "DELETE", "GET"]
WebhookUrl = Annotated[str, Field(strict=True, max_length=MAX_URL_CHARS)]


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers are allowed")
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in FORBIDDEN_HEADERS:
            raise ValueError(f"header {name!r} may not be set")
        if len(value) > MAX_HEADER_VALUE_CHARS or not value.isprintable():
            raise ValueError(
                f"header {name!r} must be printable and at most {MAX_HEADER_VALUE_CHARS} characters"
            )
    return headers


def encoded_body(body: JsonValue, method: str) -> bytes:
    """A JSON body as sent; ValueError when it is too large or the method carries none."""
    if method == "GET":
        raise ValueError("body: a GET webhook carries no body")
    encoded = json.dumps(body, separators=(",", ":")).encode()
    if len(encoded) > MAX_BODY_BYTES:
        raise ValueError(f"body: at most {MAX_BODY_BYTES} bytes of JSON")
    return encoded


class WebhookOptions(RequestBody):
    url: WebhookUrl
    method: WebhookMethod = "POST"
    headers: dict[str, str] = Field(
        default_factory=dict,
        description=f"At most {MAX_HEADERS}; no hop-by-hop headers, Host, Content-Length, "
        "Idempotency-Key or webhook-*.",
    )
    body: JsonValue = Field(
        default=None,
        description=f"Any JSON value, at most {MAX_BODY_BYTES} bytes; not allowed with GET.",
    )

    @field_validator("url")
    @classmethod
    def url_is_http(cls, url: str) -> str:
        return check_http_url(url)

    @field_validator("headers")
    @classmethod
    def headers_are_sendable(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers)

    @model_validator(mode="after")
    def body_fits(self) -> Self:
        if "body" in self.model_fields_set:
            encoded_body(self.body, self.method)
        return self

    def webhook_body(self) -> bytes | None:
        """The body to send, or None for the feature's default (an empty body for GET)."""
        if "body" in self.model_fields_set:
            return encoded_body(self.body, self.method)
        return b"" if self.method == "GET" else None
