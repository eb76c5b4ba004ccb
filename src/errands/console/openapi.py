"""How console routes describe themselves in the API schema: HTML answers with an example,
and the form bodies they take."""

from typing import Any

__all__ = ["form_body", "html_answers"]

PAGE_EXAMPLE = '<!doctype html><html lang="en"><head><title>Monitors · Errands</title>…'
ERROR_EXAMPLE = '<!doctype html><html lang="en"><head><title>Not allowed · Errands</title>…'

ANSWERS: dict[int, str] = {
    200: "The page",
    303: "Done, or not signed in: go to the page in `Location`",
    304: "Not modified since the ETag sent",
    403: "Not allowed: no session scope for this page, or a form without a valid token",
    404: "Nothing has this id",
    409: "The change conflicts with the current state",
    422: "Invalid input: the form again saying which value is wrong, or a parameter of the "
    "wrong form",
}


def html_answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a console route answering with HTML pages of these statuses."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in (200, *statuses):
        if status in (303, 304):
            answers[status] = {"description": ANSWERS[status]}
            continue
        example = PAGE_EXAMPLE if status == 200 else ERROR_EXAMPLE
        content: dict[str, Any] = {"text/html": {"schema": {"type": "string"}, "example": example}}
        if status == 422:  # a query or path parameter of the wrong form is refused as in the API
            content["application/json"] = {
                "schema": {"$ref": "#/components/schemas/ErrorDetail"},
                "example": {"detail": "page: Input should be greater than or equal to 1"},
            }
        answers[status] = {"description": ANSWERS[status], "content": content}
    return answers


def form_body(fields: dict[str, dict[str, Any]], example: dict[str, str]) -> dict[str, Any]:
    """`openapi_extra=` for a route reading an HTML form (always with its CSRF token)."""
    properties = {"csrf_token": {"type": "string"}, **fields}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["csrf_token"],
                        "properties": properties,
                        "additionalProperties": False,
                    },
                    "example": {"csrf_token": "3f1c…", **example},
                }
            },
        }
    }
