"""The HTTP client of the `errands` commands that talk to a running service (timers, uploads,
monitors): the base URL and API key, and every failure as one line with its exit code."""

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

__all__ = ["EXIT_FAILED", "EXIT_UNREACHABLE", "EXIT_USAGE", "ServiceClient", "ServiceError"]

# Exit codes of the `errands` commands (typer itself exits 2 on a bad command line).
EXIT_FAILED = 1  # the service refused the request, or the work failed
EXIT_USAGE = 2  # a bad command line, setting or input file
EXIT_UNREACHABLE = 3  # the service (or its database) could not be reached
TIMEOUT_S = 30.0


class ServiceError(Exception):
    """A request that did not succeed; the message is one line, `exit_code` says which kind."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServiceClient:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        kept = {name: value for name, value in params.items() if value is not None}
        return self._request("GET", path, params=kept)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def upload(self, files: list[Path]) -> Any:
        with ExitStack() as opened:
            try:
                parts = [
                    ("files", (path.name, opened.enter_context(path.open("rb")))) for path in files
                ]
            except OSError as error:
                raise ServiceError(
                    f"cannot read {error.filename}: {error.strerror}", EXIT_USAGE
                ) from None
            return self._request("POST", "/uploads", files=parts)

    def _request(self, method: str, path: str, **sent: Any) -> Any:
        try:
            response = self._http.request(method, path, **sent)
        except httpx.TimeoutException:
            raise ServiceError(
                f"{self.base_url} did not answer within {TIMEOUT_S:.0f} s", EXIT_UNREACHABLE
            ) from None
        except httpx.TransportError as error:
            raise ServiceError(
                f"cannot reach the service at {self.base_url} ({error or type(error).__name__}); "
                "is `errands serve` running? (--url or ERRANDS_API_URL)",
                EXIT_UNREACHABLE,
            ) from None
        if response.is_success:
            return response.json() if response.content else None
        detail = _detail(response)
        if response.status_code >= 500:
            raise ServiceError(f"the service failed: {detail}", EXIT_UNREACHABLE)
        if response.status_code == 401:
            detail += " (--api-key or ERRANDS_API_KEY)"
        raise ServiceError(detail, EXIT_FAILED)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} from {response.request.url.path}"
    return str(detail)
