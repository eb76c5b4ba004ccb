"""How bad input becomes a clear 422: the base of every request body, and the rendering of
validation errors that stays valid JSON whatever the client sent."""

import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, model_validator

__all__ = ["RequestBody", "render_validation_error"]


class RequestBody(BaseModel):
    """A JSON request body. Text PostgreSQL cannot store — NUL characters and halves of
    surrogate pairs, both legal as JSON escapes — is refused here for every field at once."""

    @model_validator(mode="before")
    @classmethod
    def storable_text(cls, data: Any) -> Any:
        for where, text in _strings_in(data, "body"):
            if "\x00" in text:
                raise ValueError(f"{where} must not contain NUL (\\u0000) characters")
            if not _is_utf8(text):
                raise ValueError(f"{where} must not contain unpaired surrogates (\\ud800-\\udfff)")
        return data


def _strings_in(value: Any, where: str) -> list[tuple[str, str]]:
    """Every string in a decoded JSON value, keys included, with where it stands."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, list):
        return [
            found for n, item in enumerate(value) for found in _strings_in(item, f"{where}[{n}]")
        ]
    if isinstance(value, dict):
        return [
            found
            for key, item in value.items()
            for found in [
                *_strings_in(key, f"a key in {where}"),
                *_strings_in(item, f"{where}.{key}"),
            ]
        ]
    return []


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def render_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 list, with the echoed input made JSON-safe: numbers too large for a float
    (1e400) and unpaired surrogates cannot be written as JSON, and would turn a 422 into a 500."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(error.errors()))}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and not _is_utf8(value):
        return value.encode(errors="backslashreplace").decode()
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    return value
