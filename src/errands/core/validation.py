"""How bad input becomes a clear 422: the base of every request body, and the one rendering of
validation errors, `{"detail": "<message>"}`, short and valid JSON whatever the client sent."""

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import ErrorDetails

from errands.core.errors import Unprocessable
from errands.core.http import BlockedTarget, GuardedClient

__all__ = [
    "MAX_ITEMS_PER_LIST",
    "MAX_REPORTED_PROBLEMS",
    "RequestBody",
    "check_http_url",
    "check_target",
    "describe_problems",
    "render_validation_error",
]

# No route takes longer lists; a longer one is refused before its items are validated, so a huge
# body costs one pass over it instead of one error per item.
MAX_ITEMS_PER_LIST = 10_000
# A 422 names this many problems at most, then says how many more there were.
MAX_REPORTED_PROBLEMS = 10
MAX_SHOWN_CHARS = 80


class RequestBody(BaseModel):
    """A JSON request body: unknown fields are refused (a misspelled `minute` must not be quietly
    dropped), lists are bounded, and text PostgreSQL cannot store — NUL characters and halves of
    surrogate pairs, both legal as JSON escapes — is refused for every field at once."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def bounded_and_storable(cls, data: Any) -> Any:
        # One quick pass without locations; only a body with a problem is walked again to say
        # where it is.
        if _has_unstorable_text_or_long_list(data):
            raise ValueError(_where_is_the_problem(data))
        return data


def check_http_url(url: str, field: str = "url") -> str:
    """`url` when it is an http(s) URL with a host and a valid port, free of spaces, backslashes
    and control characters; otherwise a ValueError that names `field`. Where it may be sent is
    the outbound guard's to say."""
    if not url.isprintable() or " " in url or "\\" in url:
        raise ValueError(f"{field} must not contain spaces, backslashes or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port out of range is a ValueError
    except ValueError as error:
        raise ValueError(f"{field} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http:// or https:// URL with a host")
    return url


def check_target(http: GuardedClient, url: str, *, field: str = "url", tcp: bool = False) -> None:
    """A 422 naming `field` unless the guarded client may send to `url` (a private address only
    where private targets are allowed); with `tcp`, a `tcp://host:port` target is one too."""
    try:
        if tcp and url.startswith("tcp://"):
            http.check_tcp_target(url)
        else:
            http.check_url(url)
    except BlockedTarget as error:
        raise Unprocessable(f"{field} is not allowed: {error}") from None


def _has_unstorable_text_or_long_list(data: Any) -> bool:
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value or not _is_utf8(value):
                return True
        elif isinstance(value, list):
            if len(value) > MAX_ITEMS_PER_LIST:
                return True
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
    return False


def _where_is_the_problem(data: Any) -> str:
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return f"{where or 'the body'} must not contain NUL (\\u0000)"
            if not _is_utf8(value):
                return (
                    f"{where or 'the body'} must not contain unpaired surrogates (\\ud800-\\udfff)"
                )
        elif isinstance(value, list):
            if len(value) > MAX_ITEMS_PER_LIST:
                return (
                    f"{where or 'the body'} has {len(value)} items; no list may have more than "
                    f"{MAX_ITEMS_PER_LIST}"
                )
            pending.extend((f"{where}[{n}]", item) for n, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                pending.append((f"a key in {where or 'the body'}", key))
                pending.append((f"{where}.{key}" if where else str(key), item))
    raise AssertionError("called for a body without a problem")


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def describe_problems(problems: Sequence[ErrorDetails], *, json_body: bool = True) -> str:
    """One line naming each problem (the first few of them) and where it is, in the client's
    words: `hours: Input should be greater than or equal to 0; days: unknown field`."""
    described = [_describe(problem, json_body) for problem in problems[:MAX_REPORTED_PROBLEMS]]
    more = len(problems) - MAX_REPORTED_PROBLEMS
    if more > 0:
        described.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "; ".join(dict.fromkeys(described))


def _describe(problem: ErrorDetails, json_body: bool) -> str:
    location = _location(problem["loc"])
    kind = problem["type"]
    if location in ("", "body"):
        if kind == "missing":
            return "the request needs a JSON body"
        if kind in ("model_attributes_type", "dict_type") and not json_body:
            return "the body is not read as JSON: send it with Content-Type: application/json"
        if kind == "model_attributes_type":
            return "the body must be a JSON object"
    if kind == "json_invalid":
        reason = (problem.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON (at character {location.strip('[]')}): {reason}"
    if kind == "extra_forbidden":
        return f"{location}: unknown field; send only the fields this route documents"
    message = problem["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        # A validator that already names the field says so at the start of its message.
        if message.startswith(location):
            return message
    return f"{location}: {message}" if location else message


def _location(loc: tuple[int | str, ...]) -> str:
    """`("body", "domains", 3)` as `domains[3]`; text too long or odd is shortened and quoted."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = str(part)
            if len(name) > MAX_SHOWN_CHARS or not name.isprintable() or not _is_utf8(name):
                name = repr(name[:MAX_SHOWN_CHARS]).encode(errors="backslashreplace").decode()
            text += f".{name}" if text else name
    return text


async def render_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # FastAPI reads a body as JSON under these media types (or none), and as bytes otherwise.
    json_body = media_type in ("", "application/json") or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    detail = describe_problems(error.errors(), json_body=json_body)
    return JSONResponse({"detail": detail}, status_code=422)
