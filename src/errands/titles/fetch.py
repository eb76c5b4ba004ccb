"""Fetch many pages at once through the guarded client, each read by a body reader (its title,
its link preview) that says when it has read enough."""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Literal, Protocol, TypeVar

import aiohttp
import structlog

from errands.core.http import GuardedClient, OutboundError
from errands.core.metrics import TITLES_FETCHED
from errands.titles.cache import RecentTitles
from errands.titles.domains import Target
from errands.titles.extract import TitleReader, document_kind

__all__ = [
    "BodyReader",
    "Fetched",
    "Outcome",
    "PageTitle",
    "TitleCache",
    "TitleStatus",
    "fetch_pages",
    "fetch_titles",
]

log = structlog.get_logger(__name__)

Content = TypeVar("Content")
Content_co = TypeVar("Content_co", covariant=True)
Outcome = Literal["read", "not_a_page", "timeout", "error"]
TitleStatus = Literal["ok", "no_title", "timeout", "error"]

# Fetches stop this long before the cap, leaving time to close them and send the answer.
RESPONSE_MARGIN_S = 0.1
# Cancelled fetches only close sockets; those not closed within this finish in the background.
CANCEL_GRACE_S = 0.05
ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
READ_BYTES = 8 * 1024
# Errors after which the plain-http try for a bare domain cannot fare better.
_FINAL_KINDS = frozenset({"blocked", "dns", "redirect", "timeout"})


class BodyReader(Protocol[Content_co]):
    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes of the body; True once enough has been read."""
        ...

    def result(self) -> Content_co:
        """What was found in the bytes read (the end of the body, or of what was read)."""
        ...


@dataclass(frozen=True)
class Fetched(Generic[Content]):
    url: str
    outcome: Outcome
    content: Content | None  # set when the outcome is "read"
    error: str | None
    elapsed_ms: float
    cached: bool = False


@dataclass(frozen=True)
class PageTitle:
    url: str
    title: str | None
    status: TitleStatus
    error: str | None
    elapsed_ms: float
    cached: bool = False


TitleCache = RecentTitles[Target, Fetched[str | None]]

# Cancelled fetches still closing after the answer was sent, held so they finish undisturbed.
_closing: set["asyncio.Task[Fetched[object]]"] = set()


async def fetch_titles(
    client: GuardedClient,
    targets: Sequence[Target],
    *,
    timeout_s: float,
    max_body_bytes: int,
    cache: TitleCache | None = None,
) -> list[PageTitle]:
    """Each target's title, in order; a repeated target is fetched once. Returns within
    `timeout_s`, marking what did not finish as "timeout"."""
    pages = await fetch_pages(
        client,
        targets,
        _title_reader,
        timeout_s=timeout_s,
        max_body_bytes=max_body_bytes,
        cache=cache,
    )
    titles = [_page_title(page) for page in pages]
    # A repeated target shares one fetched page: count each page once, and no cache hits.
    fetched = {
        id(page): title for page, title in zip(pages, titles, strict=True) if not page.cached
    }
    for title in fetched.values():
        TITLES_FETCHED.labels(outcome=title.status).inc()
    return titles


def _title_reader(content_type: str | None, url: str) -> TitleReader:
    return TitleReader(content_type)


def _page_title(page: Fetched[str | None]) -> PageTitle:
    status: TitleStatus
    if page.outcome == "timeout" or page.outcome == "error":
        status = page.outcome
    else:
        status = "ok" if page.content is not None else "no_title"
    return PageTitle(
        url=page.url,
        title=page.content,
        status=status,
        error=page.error,
        elapsed_ms=page.elapsed_ms,
        cached=page.cached,
    )


async def fetch_pages(
    client: GuardedClient,
    targets: Sequence[Target],
    make_reader: Callable[[str | None, str], BodyReader[Content]],
    *,
    timeout_s: float,
    max_body_bytes: int,
    cache: RecentTitles[Target, Fetched[Content]] | None = None,
) -> list[Fetched[Content]]:
    """Each target's page read by `make_reader(content_type, url)`, in order; a repeated target is
    fetched once. Returns within `timeout_s`, marking what did not finish as "timeout"."""
    started = time.monotonic()
    deadline = started + max(timeout_s - RESPONSE_MARGIN_S, 0.0)
    found: dict[Target, Fetched[Content]] = {}
    tasks: dict[Target, asyncio.Task[Fetched[Content]]] = {}
    for target in targets:
        if target in found or target in tasks:
            continue
        cached = cache.get(target) if cache is not None else None
        if cached is not None:
            found[target] = replace(cached, cached=True, elapsed_ms=0.0)
            continue
        tasks[target] = asyncio.create_task(
            _fetch_page(
                client, target, make_reader, deadline=deadline, max_body_bytes=max_body_bytes
            )
        )

    if tasks:
        await asyncio.wait(tasks.values(), timeout=max(deadline - time.monotonic(), 0.0))
    unfinished = {task for task in tasks.values() if not task.done()}
    for task in unfinished:
        task.cancel()
    for target, task in tasks.items():
        page: Fetched[Content]
        if task in unfinished:
            page = Fetched(
                url=target.urls[0],
                outcome="timeout",
                content=None,
                error=f"no answer within {timeout_s:g} s",
                elapsed_ms=round((time.monotonic() - started) * 1000, 2),
            )
        elif (failure := task.exception()) is not None:
            # One page tripping an unforeseen failure must not cost the other pages their
            # answers; the traceback goes to the log so the bug is seen and fixed.
            log.error("page_fetch_crashed", url=target.urls[0], exc_info=failure)
            page = _fetched(target.urls[0], "error", None, "unexpected failure reading the page")
        else:
            page = task.result()
            if cache is not None and page.outcome in ("read", "not_a_page"):
                cache.put(target, page)
        found[target] = page
    if unfinished:
        _, still_closing = await asyncio.wait(unfinished, timeout=CANCEL_GRACE_S)
        for task in still_closing:
            _closing.add(task)  # type: ignore[arg-type]
            task.add_done_callback(_closing.discard)
    return [found[target] for target in targets]


async def _fetch_page(
    client: GuardedClient,
    target: Target,
    make_reader: Callable[[str | None, str], BodyReader[Content]],
    *,
    deadline: float,
    max_body_bytes: int,
) -> Fetched[Content]:
    """Try each of the target's URLs until one answers."""
    started = time.monotonic()
    page: Fetched[Content] | None = None
    for url in target.urls:
        try:
            page = await _read_page(
                client, url, make_reader, deadline=deadline, max_body_bytes=max_body_bytes
            )
        except OutboundError as error:
            page = _fetched(
                url, "timeout" if error.kind == "timeout" else "error", None, str(error)
            )
            if error.kind in _FINAL_KINDS:
                break
        else:
            break
    assert page is not None
    return replace(page, elapsed_ms=round((time.monotonic() - started) * 1000, 2))


async def _read_page(
    client: GuardedClient,
    url: str,
    make_reader: Callable[[str | None, str], BodyReader[Content]],
    *,
    deadline: float,
    max_body_bytes: int,
) -> Fetched[Content]:
    async with client.stream(
        "GET", url, headers={"Accept": ACCEPT}, timeout_s=deadline - time.monotonic()
    ) as response:
        final_url = str(response.url)
        if response.status >= 400:
            error = f"HTTP {response.status} {response.reason or ''}".strip()
            return _fetched(final_url, "error", None, error)
        content_type = response.headers.get("Content-Type")
        if document_kind(content_type) is None:
            return _fetched(final_url, "not_a_page", None, f"not a web page ({content_type})")
        reader = make_reader(content_type, final_url)
        read = 0
        try:
            while read < max_body_bytes:
                # Reading the page is CPU work that no timeout can interrupt: small reads and a
                # look at the clock before each keep many busy pages from holding the answer
                # past the cap.
                if time.monotonic() >= deadline:
                    raise OutboundError(f"{response.url.host} timed out", kind="timeout")
                chunk = await response.content.read(min(READ_BYTES, max_body_bytes - read))
                if not chunk:
                    break
                read += len(chunk)
                if reader.feed(chunk):
                    break
        except aiohttp.ClientPayloadError as error:
            # A body cut short still has whatever arrived before the cut.
            log.debug("body_cut_short", url=final_url, error=str(error))
        if time.monotonic() >= deadline:  # what is left to do may be a whole page's parse
            raise OutboundError(f"{response.url.host} timed out", kind="timeout")
        return _fetched(final_url, "read", reader.result(), None)


def _fetched(
    url: str, outcome: Outcome, content: Content | None, error: str | None
) -> Fetched[Content]:
    # The caller times the whole attempt, https and http tries included.
    return Fetched(url=url, outcome=outcome, content=content, error=error, elapsed_ms=0.0)
