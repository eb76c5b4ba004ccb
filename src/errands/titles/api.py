"""POST /titles: the title of each domain's index page; POST /previews: each page's link
preview. Both answer within the configured cap."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from errands.config import Settings
from errands.core.errors import Unprocessable
from errands.core.http import GuardedClient
from errands.core.openapi import answer, request_example
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody
from errands.titles.domains import InvalidDomain, Target, parse_domain
from errands.titles.fetch import (
    Fetched,
    Outcome,
    PageTitle,
    TitleCache,
    TitleStatus,
    fetch_pages,
    fetch_titles,
)
from errands.titles.previews import LinkPreview, PreviewReader, TitleSource

__all__ = [
    "PreviewsRequest",
    "PreviewsResponse",
    "TitlesRequest",
    "TitlesResponse",
    "parse_domains",
    "previews_response",
    "previews_router",
    "router",
    "titles_response",
]

router = APIRouter(tags=["titles"])
# Its own router, under the titles scope of API keys (core/auth.py reads the tag).
previews_router = APIRouter(tags=["titles"])


class TitlesRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    domains: list[str] = Field(
        description="Bare domains (https is tried, then http), http(s) URLs, or IDNs.",
        examples=[["example.com", "https://www.python.org/", "bücher.de"]],
    )


class TitleResult(BaseModel):
    domain: str = Field(description="The entry as sent.")
    url: str = Field(description="The page read: the last URL tried, after redirects.")
    title: str | None
    status: TitleStatus
    error: str | None
    elapsed_ms: float
    cached: bool = Field(description="Answered from this process's recent titles.")


class TitlesResponse(BaseModel):
    titles: list[str | None] = Field(description="Each entry's title or null, in input order.")
    results: list[TitleResult]
    elapsed_ms: float


def parse_domains(domains: list[str], max_domains: int, field: str = "domains") -> list[Target]:
    """Every entry as a target to fetch, or Unprocessable naming the first bad one."""
    if not domains:
        raise Unprocessable(f"{field} is empty: send at least one entry")
    if len(domains) > max_domains:
        raise Unprocessable(
            f"{field} has {len(domains)} entries; at most {max_domains} are accepted"
        )
    targets = []
    for index, entry in enumerate(domains):
        try:
            targets.append(parse_domain(entry))
        except InvalidDomain as problem:
            shown = entry if len(entry) <= 80 else entry[:80] + "..."
            raise Unprocessable(f"{field}[{index}] {shown!r} {problem}") from None
    return targets


async def titles_response(
    client: GuardedClient,
    settings: Settings,
    domains: list[str],
    cache: TitleCache | None = None,
) -> TitlesResponse:
    """Validate, fetch within the cap, and answer in input order (the API and the CLI)."""
    started = time.perf_counter()
    targets = parse_domains(domains, settings.titles_max_domains)
    pages = await fetch_titles(
        client,
        targets,
        timeout_s=settings.titles_timeout_s,
        max_body_bytes=settings.titles_max_body_bytes,
        cache=cache,
    )
    return TitlesResponse(
        titles=[page.title for page in pages],
        results=[_result(domain, page) for domain, page in zip(domains, pages, strict=True)],
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def recent_titles(
    request: Request, resources: Annotated[Resources, Depends(get_resources)]
) -> TitleCache | None:
    """This app's cache of recent titles, made on first use; None when turned off."""
    settings: Settings = resources.settings
    if settings.titles_cache_size == 0:
        return None
    cache: TitleCache | None = getattr(request.app.state, "recent_titles", None)
    if cache is None:
        cache = TitleCache(settings.titles_cache_size, settings.titles_cache_ttl_s)
        request.app.state.recent_titles = cache
    return cache


@router.post(
    "/titles",
    summary="Page titles of domains",
    openapi_extra=request_example({"domains": ["example.com", "https://www.python.org/"]}),
    responses={
        200: answer(
            {
                "titles": ["Example Domain", None],
                "results": [
                    {
                        "domain": "example.com",
                        "url": "https://example.com/",
                        "title": "Example Domain",
                        "status": "ok",
                        "error": None,
                        "elapsed_ms": 48.2,
                        "cached": False,
                    },
                    {
                        "domain": "https://www.python.org/",
                        "url": "https://www.python.org/",
                        "title": None,
                        "status": "timeout",
                        "error": "no answer within 10 s",
                        "elapsed_ms": 10000.0,
                        "cached": False,
                    },
                ],
                "elapsed_ms": 10001.3,
            }
        ),
        422: answer(
            {"detail": "domains has 1200 entries; at most 1000 are accepted"},
            "Not a list of domains, empty, too long, or a bad entry.",
        ),
    },
)
async def post_titles(
    body: TitlesRequest,
    resources: Annotated[Resources, Depends(get_resources)],
    cache: Annotated[TitleCache | None, Depends(recent_titles)],
) -> TitlesResponse:
    """Fetch each domain's index page and return its title, within the configured cap (10 s).

    Repeated domains are fetched once. A page not finished in time is marked "timeout"; the
    answer is still 200 with everything that did finish.
    """
    return await titles_response(resources.http, resources.settings, body.domains, cache)


def _result(domain: str, page: PageTitle) -> TitleResult:
    return TitleResult(
        domain=domain,
        url=page.url,
        title=page.title,
        status=page.status,
        error=page.error,
        elapsed_ms=page.elapsed_ms,
        cached=page.cached,
    )


class PreviewsRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(
        description="http(s) URLs, or bare domains (https is tried, then http), or IDNs.",
        examples=[["https://www.python.org/", "example.com"]],
    )


class PreviewResult(BaseModel):
    entry: str = Field(description="The entry as sent.")
    url: str = Field(description="The page read: the last URL tried, after redirects.")
    status: Outcome = Field(
        description="read; not_a_page (an image, a PDF...); timeout; error (see error)."
    )
    error: str | None
    elapsed_ms: float
    title: str | None = Field(description="document.title, as a browser shows it.")
    preview_title: str | None = Field(
        description="The title a link preview shows: og:title, else twitter:title, else "
        "document.title, else the first <h1>."
    )
    preview_title_from: TitleSource | None
    og_title: str | None = Field(description="<meta property=og:title>.")
    description: str | None = Field(
        description="og:description, else twitter:description, else <meta name=description>."
    )
    image: str | None = Field(description="og:image, else twitter:image, as an absolute URL.")
    canonical: str | None = Field(description='<link rel="canonical">, else og:url; absolute.')
    lang: str | None = Field(description="<html lang>, else the Content-Language <meta>.")
    site_name: str | None = Field(description="og:site_name, else application-name.")
    favicon: str | None = Field(
        description='<link rel="icon">, else apple-touch-icon, else /favicon.ico; absolute.'
    )


PREVIEW_EXAMPLE: dict[str, JsonValue] = {
    "entry": "https://www.python.org/",
    "url": "https://www.python.org/",
    "status": "read",
    "error": None,
    "elapsed_ms": 180.2,
    "title": "Welcome to Python.org",
    "preview_title": "Welcome to Python.org",
    "preview_title_from": "og:title",
    "og_title": "Welcome to Python.org",
    "description": "The official home of the Python Programming Language",
    "image": "https://www.python.org/static/opengraph-icon-200x200.png",
    "canonical": "https://www.python.org/",
    "lang": "en",
    "site_name": "Python.org",
    "favicon": "https://www.python.org/static/favicon.ico",
}


class PreviewsResponse(BaseModel):
    previews: list[PreviewResult] = Field(description="One per entry, in input order.")
    elapsed_ms: float

    model_config = {
        "json_schema_extra": {"examples": [{"previews": [PREVIEW_EXAMPLE], "elapsed_ms": 190.5}]}
    }


async def previews_response(
    client: GuardedClient, settings: Settings, entries: list[str]
) -> PreviewsResponse:
    """Validate, fetch within the cap, and answer in input order."""
    started = time.perf_counter()
    targets = parse_domains(entries, settings.titles_max_domains, field="urls")
    pages = await fetch_pages(
        client,
        targets,
        PreviewReader,
        timeout_s=settings.titles_timeout_s,
        max_body_bytes=settings.titles_max_body_bytes,
    )
    return PreviewsResponse(
        previews=[_preview(entry, page) for entry, page in zip(entries, pages, strict=True)],
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@previews_router.post(
    "/previews",
    summary="Link previews of many pages",
    openapi_extra=request_example({"urls": ["https://www.python.org/"]}),
    responses={
        200: answer(
            {"previews": [PREVIEW_EXAMPLE], "elapsed_ms": 190.5},
            "Every entry's preview or why there is none, in input order.",
        ),
        422: answer(
            {"detail": "urls has 1200 entries; at most 1000 are accepted"},
            "Not a list of URLs, empty, too long, or a bad entry.",
        ),
    },
)
async def post_previews(
    body: PreviewsRequest, resources: Annotated[Resources, Depends(get_resources)]
) -> PreviewsResponse:
    """Fetch each page and return what a link preview shows: titles, description, image,
    canonical URL, language, site name and icon, with links made absolute.

    The same limits as POST /titles: the cap on the whole request (10 s), the body cap, the
    outbound guard and the entry count. A page not finished in time is marked "timeout"; the
    answer is still 200 with everything that did finish.
    """
    return await previews_response(resources.http, resources.settings, body.urls)


def _preview(entry: str, page: Fetched[LinkPreview]) -> PreviewResult:
    found = page.content
    return PreviewResult(
        entry=entry,
        url=page.url,
        status=page.outcome,
        error=page.error,
        elapsed_ms=page.elapsed_ms,
        title=found.title if found else None,
        preview_title=found.preview_title if found else None,
        preview_title_from=found.preview_title_from if found else None,
        og_title=found.og_title if found else None,
        description=found.description if found else None,
        image=found.image if found else None,
        canonical=found.canonical if found else None,
        lang=found.lang if found else None,
        site_name=found.site_name if found else None,
        favicon=found.favicon if found else None,
    )
