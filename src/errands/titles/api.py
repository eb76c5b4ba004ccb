"""POST /titles: the title of each domain's index page, answered within the configured cap."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from errands.config import Settings
from errands.core.errors import Unprocessable
from errands.core.http import GuardedClient
from errands.core.openapi import answer, request_example
from errands.core.resources import Resources, get_resources
from errands.core.validation import RequestBody
from errands.titles.domains import InvalidDomain, Target, parse_domain
from errands.titles.fetch import PageTitle, TitleCache, TitleStatus, fetch_titles

__all__ = ["TitlesRequest", "TitlesResponse", "parse_domains", "router", "titles_response"]

router = APIRouter(tags=["titles"])


class TitlesRequest(RequestBody):
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


def parse_domains(domains: list[str], max_domains: int) -> list[Target]:
    """Every entry as a target to fetch, or Unprocessable naming the first bad one."""
    if not domains:
        raise Unprocessable("domains is empty: send at least one domain")
    if len(domains) > max_domains:
        raise Unprocessable(
            f"domains has {len(domains)} entries; at most {max_domains} are accepted"
        )
    targets = []
    for index, entry in enumerate(domains):
        try:
            targets.append(parse_domain(entry))
        except InvalidDomain as problem:
            shown = entry if len(entry) <= 80 else entry[:80] + "..."
            raise Unprocessable(f"domains[{index}] {shown!r} {problem}") from None
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
