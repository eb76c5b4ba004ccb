"""The errors users can see, each mapped to its 4xx status by one handler in the app.

ErrandsError (400)
 ├── NotFound (404)
 ├── RequestTimeout (408)
 ├── Conflict (409)
 ├── PayloadTooLarge (413)
 ├── UnsupportedMediaType (415)
 └── Unprocessable (422)

Each is answered as `ErrorDetail`, `{"detail": "<message>"}`, the one error body of the API.
"""

from pydantic import BaseModel, Field

__all__ = [
    "Conflict",
    "ErrandsError",
    "ErrorDetail",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "Unprocessable",
    "UnsupportedMediaType",
]


class ErrandsError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ErrandsError):
    status_code = 404


class RequestTimeout(ErrandsError):
    status_code = 408


class Conflict(ErrandsError):
    status_code = 409


class PayloadTooLarge(ErrandsError):
    status_code = 413


class UnsupportedMediaType(ErrandsError):
    status_code = 415


class Unprocessable(ErrandsError):
    status_code = 422


class ErrorDetail(BaseModel):
    """The body of every 4xx answer (and of a 503): one message a person can act on."""

    detail: str = Field(
        description="What is wrong and how to put it right; for bad input, each problem "
        "(at most 10) with the field it is in, separated by '; '.",
        examples=["hours: Input should be greater than or equal to 0; days: unknown field"],
    )
