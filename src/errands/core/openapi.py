"""Decorator arguments that put a route's examples in the OpenAPI schema (what /docs shows)."""

from typing import Any

__all__ = ["answer", "request_example"]


def answer(example: Any, description: str | None = None) -> dict[str, Any]:
    """A `responses=` entry: a JSON answer shown by `example`."""
    documented: dict[str, Any] = {"content": {"application/json": {"example": example}}}
    return documented | ({"description": description} if description else {})


def request_example(example: Any, media_type: str = "application/json") -> dict[str, Any]:
    """An `openapi_extra=` that shows `example` as the request body."""
    return {"requestBody": {"content": {media_type: {"example": example}}}}
