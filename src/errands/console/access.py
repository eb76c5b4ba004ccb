"""Signing in and out of the console, its static files, its error pages, and how it is mounted
on the app."""

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from errands.console import pages, status
from errands.console.openapi import form_body, html_answers
from errands.console.session import (
    PageError,
    SignInNeeded,
    Viewer,
    checked_form,
    end_session,
    start_session,
)
from errands.console.templating import SECURITY_HEADERS, render, static_files
from errands.core.errors import NotFound
from errands.core.resources import Resources, get_resources
from errands.core.routing import add_routes

__all__ = ["SignInPage", "mount_console", "router"]

router = APIRouter(tags=["console"])

ResourcesDep = Annotated[Resources, Depends(get_resources)]
NOBODY = Viewer(key_name=None, scopes=frozenset())
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class SignInPage:
    title: str
    keys_enabled: bool
    next_path: str
    error: str | None


@dataclass(frozen=True)
class ErrorPage:
    title: str
    status_code: int
    detail: str


def _safe_next(path: str) -> str:
    """Only a path of this site: never `//host` or a full URL, which would send people away."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


NextPath = Annotated[str, Query(max_length=2048, examples=["/console/monitors"])]


@router.get(
    "/console/sign-in",
    summary="Sign-in form",
    response_class=HTMLResponse,
    responses=html_answers(),
)
async def sign_in_form(
    request: Request, resources: ResourcesDep, next: NextPath = "/"
) -> HTMLResponse:
    """The form that asks for an API key once; the console then keeps a session cookie."""
    page = SignInPage("Sign in", resources.settings.api_keys_enabled, _safe_next(next), None)
    return await render(
        request, resources, "sign_in.html", viewer=NOBODY, section="sign-in", page=page
    )


@router.post(
    "/console/sign-in",
    summary="Sign in with an API key",
    response_class=HTMLResponse,
    responses=html_answers(303, 403),
    openapi_extra=form_body(
        {"key": {"type": "string"}, "next": {"type": "string"}},
        {"key": "errands_…", "next": "/console/monitors"},
    ),
)
async def sign_in(request: Request, resources: ResourcesDep) -> Response:
    """Check the key and start a session: a signed, expiring, HttpOnly, SameSite=Strict cookie
    (Secure under https). A wrong key shows the form again with a 403."""
    fields = await checked_form(request, resources)
    next_path = _safe_next(fields.get("next", "/"))
    if not resources.settings.api_keys_enabled:
        return RedirectResponse(next_path, status_code=303)
    response = RedirectResponse(next_path, status_code=303)
    if await start_session(request, resources, fields.get("key", ""), response) is None:
        page = SignInPage("Sign in", True, next_path, "this key is unknown or was revoked")
        return await render(
            request,
            resources,
            "sign_in.html",
            viewer=NOBODY,
            section="sign-in",
            page=page,
            status_code=403,
        )
    return response


@router.post(
    "/console/sign-out",
    summary="Sign out",
    response_class=HTMLResponse,
    responses=html_answers(303, 403),
    openapi_extra=form_body({}, {}),
)
async def sign_out(request: Request, resources: ResourcesDep) -> RedirectResponse:
    """End the session: the cookie is removed and the sign-in form shown."""
    await checked_form(request, resources)
    response = RedirectResponse("/console/sign-in", status_code=303)
    end_session(response)
    return response


@router.get(
    "/console/static/{name}",
    summary="A static file of the console",
    response_class=Response,
    responses={
        200: {"description": "The file", "content": {"text/css": {}, "text/javascript": {}}},
        304: {"description": "Not modified since the ETag sent"},
        404: {"description": "No such file"},
    },
)
async def static_file(
    request: Request,
    name: str,
    v: Annotated[str, Query(max_length=64, description="Content hash", examples=["1a2b3c"])] = "",
) -> Response:
    """CSS and JavaScript of the console. With the current content hash in `v` the file may
    be cached for ever; otherwise it is revalidated by its ETag."""
    found = static_files().get(name)
    if found is None:
        raise NotFound(f"no static file {name!r}")
    etag = f'"{found.digest}"'
    caching = IMMUTABLE if v == found.digest else "no-cache"
    headers = {"ETag": etag, "Cache-Control": caching, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


ERROR_TITLES = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid input"}


async def _show_page_error(request: Request, error: PageError) -> HTMLResponse:
    resources: Resources = request.app.state.resources
    title = ERROR_TITLES.get(error.status_code, "Cannot do that")
    return await render(
        request,
        resources,
        "error.html",
        viewer=NOBODY,
        section="error",
        page=ErrorPage(title, error.status_code, error.detail),
        status_code=error.status_code,
    )


async def _send_to_sign_in(request: Request, error: SignInNeeded) -> RedirectResponse:
    query = urlencode({"next": _safe_next(error.next_path)})
    return RedirectResponse(f"/console/sign-in?{query}", status_code=303, headers=SECURITY_HEADERS)


def mount_console(app: FastAPI) -> None:
    """Serve the console's pages, the status page and their error pages on `app`."""
    for console_router in (pages.router, status.router, router):
        add_routes(app, console_router)
    app.add_exception_handler(PageError, _show_page_error)  # type: ignore[arg-type]
    app.add_exception_handler(SignInNeeded, _send_to_sign_in)  # type: ignore[arg-type]
