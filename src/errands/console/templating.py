"""Rendering the console: one Jinja2 environment (autoescape on for every template), static
files addressed by their content hash, and the headers every page carries."""

import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from errands.console.session import Viewer, form_token
from errands.core.resources import Resources

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "TEMPLATES",
    "Chrome",
    "StaticFile",
    "render",
    "static_files",
    "static_url",
]

# No inline script or style anywhere, so the policy can be this strict.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'"
)
STATIC_PREFIX = "/console/static/"


@dataclass(frozen=True)
class StaticFile:
    name: str
    body: bytes
    media_type: str
    digest: str  # the first 12 hex digits of its SHA-256: in its URL and its ETag


MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@functools.cache
def static_files() -> dict[str, StaticFile]:
    """The console's static files by name, read once from the package. Only these names are
    served, so no path can reach anything else."""
    found = {}
    for entry in files("errands.console").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:12]
            found[entry.name] = StaticFile(entry.name, body, MEDIA_TYPES[suffix], digest)
    return found


def static_url(name: str) -> str:
    return f"{STATIC_PREFIX}{name}?v={static_files()[name].digest}"


def _when(moment: datetime | None) -> str:
    """A time as people read it in a table: UTC, to the second."""
    if moment is None:
        return "never"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


TEMPLATES = Environment(
    loader=PackageLoader("errands.console", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["static_url"] = static_url
TEMPLATES.filters["when"] = _when
TEMPLATES.filters["percent"] = _percent
TEMPLATES.filters["ms"] = _ms


@dataclass(frozen=True)
class Chrome:
    """What the frame around every page needs: who is looking, the form token, which section
    is open."""

    viewer: Viewer
    csrf_token: str
    section: str


SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def render(
    request: Request,
    resources: Resources,
    template: str,
    *,
    viewer: Viewer,
    section: str,
    page: Any,
    status_code: int = 200,
) -> HTMLResponse:
    """A console page: private to the viewer, never stored by caches."""
    token = await form_token(request, resources)
    html = TEMPLATES.get_template(template).render(
        chrome=Chrome(viewer, token.token, section), page=page
    )
    response = HTMLResponse(
        html, status_code, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"}
    )
    token.set_cookie(request, response)
    return response
