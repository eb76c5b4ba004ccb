"""Fetch many index pages at once through the guarded client and read each one's title."""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import aiohttp
import structlog

from errands.core.http import GuardedClient, OutboundError
from errands.core.metrics import TITLES_FETCHED
from errands.titles.cache import RecentTitles
from errands.titles.domains import Target
from errands.titles.extract import TitleReader, document_kind

__all__ = ["PageTitle", "TitleCache", "TitleStatus", "fetch_titles"]

log = structlog.get_logger(__name__)

TitleStatus = Literal["ok", "no_title", "timeout", "error"]

# Fetches stop this long before the cap, leaving time to close them and send the answer.
RESPONSE_MARGIN_S = 0.1
# Cancelled fetches only close sockets; those not closed within this finish in the background.
CANCEL_GRACE_S = 0.05
ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
READ_BYTES = 8 * 1024
# Errors after which the plain-http try for a bare domain cannot fare better.
_FINAL_KINDS = frozenset({"blocked", "dns", "redirect", "timeout"})


@dataclass(frozen=True)
class PageTitle:
    url: str
    title: str | None
    status: TitleStatus
    error: str | None
    elapsed_ms: float
    cached: bool = False


TitleCache = RecentTitles[Target, PageTitle]

# Cancelled fetches still closing after the answer was sent, held so they finish undisturbed.
_closing: set["asyncio.Task[PageTitle]"] = set()


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
    started = time.monotonic()
    deadline = started + max(timeout_s - RESPONSE_MARGIN_S, 0.0)
    found: dict[Target, PageTitle] = {}
    tasks: dict[Target, asyncio.Task[PageTitle]] = {}
    for target in targets:
        if target in found or target in tasks:
            continue
        cached = cache.get(target) if cache is not None else None
        if cached is not None:
            found[target] = replace(cached, cached=True, elapsed_ms=0.0)
            continue
        tasks[target] = asyncio.create_task(
            _fetch_title(client, target, deadline=deadline, max_body_bytes=max_body_bytes)
        )

    if tasks:
        await asyncio.wait(tasks.values(), timeout=max(deadline - time.monotonic(), 0.0))
    unfinished = {task for task in tasks.values() if not task.done()}
    for task in unfinished:
        task.cancel()
    for target, task in tasks.items():
        if task in unfinished:
            page = PageTitle(
                url=target.urls[0],
                title=None,
                status="timeout",
                error=f"no title within {timeout_s:g} s",
                elapsed_ms=round((time.monotonic() - started) * 1000, 2),
            )
        elif (failure := task.exception()) is not None:
            # One page tripping an unforeseen failure must not cost the other pages their
            # answers; the traceback goes to the log so the bug is seen and fixed.
            log.error("title_fetch_crashed", url=target.urls[0], exc_info=failure)
            page = _page(target.urls[0], None, "error", "unexpected failure reading the page")
        else:
            page = task.result()
            if cache is not None and page.status in ("ok", "no_title"):
                cache.put(target, page)
        TITLES_FETCHED.labels(outcome=page.status).inc()
        found[target] = page
    if unfinished:
        _, still_closing = await asyncio.wait(unfinished, timeout=CANCEL_GRACE_S)
        for task in still_closing:
            _closing.add(task)
            task.add_done_callback(_closing.discard)
    return [found[target] for target in targets]


async def _fetch_title(
    client: GuardedClient, target: Target, *, deadline: float, max_body_bytes: int
) -> PageTitle:
    """Try each of the target's URLs until one answers."""
    started = time.monotonic()
    page: PageTitle | None = None
    for url in target.urls:
        try:
            page = await _read_title(client, url, deadline=deadline, max_body_bytes=max_body_bytes)
        except OutboundError as error:
            status: TitleStatus = "timeout" if error.kind == "timeout" else "error"
            page = _page(url, None, status, str(error))
            if error.kind in _FINAL_KINDS:
                break
        else:
            break
    assert page is not None
    return replace(page, elapsed_ms=round((time.monotonic() - started) * 1000, 2))


async def _read_title(
    client: GuardedClient, url: str, *, deadline: float, max_body_bytes: int
) -> PageTitle:
    async with client.stream(
        "GET", url, headers={"Accept": ACCEPT}, timeout_s=deadline - time.monotonic()
    ) as response:
        final_url = str(response.url)
        if response.status >= 400:
            error = f"HTTP {response.status} {response.reason or ''}".strip()
            return _page(final_url, None, "error", error)
        content_type = response.headers.get("Content-Type")
        if document_kind(content_type) is None:
            return _page(final_url, None, "no_title", f"not a web page ({content_type})")
        reader = TitleReader(content_type)
        read = 0
        try:
            while read < max_body_bytes:
                # Reading the title is CPU work that no timeout can interrupt: small reads and a
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
            # A body cut short still has whatever title arrived before the cut.
            log.debug("title_body_cut_short", url=final_url, error=str(error))
        title = reader.title()
        return _page(final_url, title, "ok" if title is not None else "no_title", None)


def _page(url: str, title: str | None, status: TitleStatus, error: str | None) -> PageTitle:
    # The caller times the whole attempt, https and http tries included.
    return PageTitle(url=url, title=title, status=status, error=error, elapsed_ms=0.0)
