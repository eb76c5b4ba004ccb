"""The errors users can see, each mapped to its 4xx status by one handler in the app.

ErrandsError (400)
 ├── NotFound (404)
 ├── Conflict (409)
 ├── PayloadTooLarge (413)
 ├── UnsupportedMediaType (415)
 └── Unprocessable (422)
"""

__all__ = [
    "Conflict",
    "ErrandsError",
    "NotFound",
    "PayloadTooLarge",
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


class Conflict(ErrandsError):
    status_code = 409


class PayloadTooLarge(ErrandsError):
    status_code = 413


class UnsupportedMediaType(ErrandsError):
    status_code = 415


class Unprocessable(ErrandsError):
    status_code = 422
