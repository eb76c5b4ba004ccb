"""POST /titles against real local sites: titles in order, the time cap, the body cap, the guard."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from errands.config import Settings
from errands.core.metrics import TITLES_FETCHED
from tests.fixtures.app import RunningApp, serve_app
from tests.fixtures.targets import TargetServer

HTML = "text/html; charset=utf-8"
CAP_S = 1.0
# Time allowed above the cap for the app to answer and the test client to receive it.
SLACK_S = 0.3


def page(title: str) -> bytes:
    return (
        f"<!doctype html><html><head><title>{title}</title></head><body>hi</body></html>".encode()
    )


@pytest.fixture
async def capped(settings: Settings) -> AsyncIterator[RunningApp]:
    """The API with a 1 s cap (so tests of the cap are quick) and no cache."""
    update = {"titles_timeout_s": CAP_S, "titles_cache_size": 0}
    async with serve_app(settings.model_copy(update=update)) as running:
        yield running


async def post_titles(client: httpx.AsyncClient, domains: object) -> httpx.Response:
    return await client.post("/titles", json={"domains": domains})


async def test_titles_in_input_order_with_results(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    first = target_server.route("/a", body=page("Alpha"), content_type=HTML)
    second = target_server.route("/b", body=page("Beta &amp; co"), content_type=HTML)
    untitled = target_server.route("/c", body=b"<p>nothing</p>", content_type=HTML)
    missing = target_server.route("/d", status=404, body=page("Not Found"), content_type=HTML)

    response = await post_titles(api, [second, first, untitled, missing])

    assert response.status_code == 200
    answer = response.json()
    assert answer["titles"] == ["Beta & co", "Alpha", None, None]
    results = answer["results"]
    assert [r["status"] for r in results] == ["ok", "ok", "no_title", "error"]
    assert results[0] | {"elapsed_ms": 0} == {
        "domain": second,
        "url": second,
        "title": "Beta & co",
        "status": "ok",
        "error": None,
        "elapsed_ms": 0,
        "cached": False,
    }
    assert "404" in results[3]["error"]
    assert answer["elapsed_ms"] > 0


async def test_repeated_domains_are_fetched_once_and_answered_everywhere(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    url = target_server.route("/same", body=page("Once"), content_type=HTML)
    other = target_server.route("/other", body=page("Other"), content_type=HTML)
    host = url.removeprefix("http://").removesuffix("/same")
    # Written three ways: the same URL twice, and with an upper-case scheme and host.
    variants = [url, other, url, f"HTTP://{host.upper()}/same"]

    response = await post_titles(api, variants)

    assert response.json()["titles"] == ["Once", "Other", "Once", "Once"]
    assert [r["domain"] for r in response.json()["results"]] == variants
    assert target_server.hits["/same"] == 1


async def test_a_bare_domain_tries_https_then_http(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    target_server.route("/", body=page("Plain HTTP"), content_type=HTML)
    bare = f"127.0.0.1:{target_server.port}"

    result = (await post_titles(api, [bare])).json()["results"][0]

    # The local site speaks only plain HTTP, so the https try fails and http answers.
    assert (result["title"], result["url"]) == ("Plain HTTP", f"http://{bare}/")
    assert target_server.hits["/"] == 1


async def test_redirects_are_followed(api: httpx.AsyncClient, target_server: TargetServer) -> None:
    final = target_server.route("/final", body=page("Landed"), content_type=HTML)
    start = target_server.route("/start", redirect_to="/middle", status=301)
    target_server.route("/middle", redirect_to=final)

    result = (await post_titles(api, [start])).json()["results"][0]

    assert (result["title"], result["url"]) == ("Landed", final)


async def test_compressed_pages(api: httpx.AsyncClient, target_server: TargetServer) -> None:
    zipped = target_server.route("/gz", body=page("Gzipped"), content_type=HTML, gzip=True)
    brotli = target_server.route("/br", body=page("Brotli"), content_type=HTML, brotli=True)

    assert (await post_titles(api, [zipped, brotli])).json()["titles"] == ["Gzipped", "Brotli"]


async def test_pages_in_other_encodings(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    russian = "Привет, мир"
    japanese = "日本語のページ"
    urls = [
        target_server.route(
            "/cp1251-header",
            body=f"<title>{russian}</title>".encode("cp1251"),
            content_type="text/html; charset=windows-1251",
        ),
        target_server.route(
            "/sjis-meta",
            body=f'<meta charset="shift_jis"><title>{japanese}</title>'.encode("shift_jis"),
            content_type="text/html",
        ),
        target_server.route(
            "/latin1-http-equiv",
            body=(
                '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
                "<title>Crème brûlée</title>"
            ).encode("latin-1"),
            content_type="text/html",
        ),
        target_server.route(
            "/latin1-undeclared",
            body="<title>La fête de la musique à Paris, été comme hiver</title>".encode("latin-1"),
            content_type="text/html",
        ),
        target_server.route(
            "/bom",
            body=b"\xef\xbb\xbf" + "<title>Zoë</title>".encode(),
            content_type="text/html; charset=windows-1251",
        ),
        target_server.route(
            "/svg-first",
            body=b"<svg><title>logo</title></svg><title>Real title</title>",
            content_type=HTML,
        ),
    ]

    titles = (await post_titles(api, urls)).json()["titles"]

    expected_latin1 = "La fête de la musique à Paris, été comme hiver"
    assert titles == [russian, japanese, "Crème brûlée", expected_latin1, "Zoë", "Real title"]


async def test_a_huge_page_is_not_downloaded_whole(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    size = 50 * 1024 * 1024
    url = target_server.route("/huge", body=page("Big"), content_type=HTML, size=size)

    result = (await post_titles(api, [url])).json()["results"][0]

    assert result["title"] == "Big"
    # The server wrote only what fit in socket buffers before the client hung up.
    assert target_server.sent_bytes["/huge"] < size // 5


async def test_a_page_without_a_title_is_read_up_to_the_cap_only(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    size = 50 * 1024 * 1024
    url = target_server.route("/endless", body=b"<p>", content_type=HTML, size=size)

    result = (await post_titles(api, [url])).json()["results"][0]

    assert result["status"] == "no_title"
    assert target_server.sent_bytes["/endless"] < size // 5


async def test_no_byte_past_the_body_cap_is_read(
    api: httpx.AsyncClient, settings: Settings, target_server: TargetServer
) -> None:
    cap = settings.titles_max_body_bytes
    just_in = b"<title>Just in</title>"
    inside = target_server.route(
        "/inside", chunks=[b"." * (cap - len(just_in)), just_in], content_type=HTML
    )
    # The title opens on the last byte allowed; one byte more would give it a letter.
    outside = target_server.route(
        "/outside", chunks=[b"." * (cap - 7), b"<title>", b"Beyond"], content_type=HTML
    )

    answer = (await post_titles(api, [inside, outside])).json()

    assert answer["titles"] == ["Just in", None]
    assert answer["results"][1]["status"] == "no_title"


async def test_a_slow_site_is_marked_timeout_within_the_cap(
    capped: RunningApp, target_server: TargetServer
) -> None:
    fast = target_server.route("/fast", body=page("Fast"), content_type=HTML)
    slow = target_server.route("/slow", body=page("Slow"), content_type=HTML, delay_s=30)
    timeouts_before = TITLES_FETCHED.labels(outcome="timeout")._value.get()

    started = time.monotonic()
    response = await post_titles(capped.client, [fast, slow])
    took_s = time.monotonic() - started

    assert response.status_code == 200
    assert CAP_S * 0.8 <= took_s <= CAP_S + SLACK_S
    answer = response.json()
    assert answer["titles"] == ["Fast", None]
    assert answer["results"][1]["status"] == "timeout"
    assert answer["results"][1]["elapsed_ms"] <= CAP_S * 1000
    assert TITLES_FETCHED.labels(outcome="timeout")._value.get() == timeouts_before + 1


async def test_a_site_that_never_closes(capped: RunningApp, target_server: TargetServer) -> None:
    titled = target_server.route(
        "/titled", chunks=[page("Streaming")], never_close=True, content_type=HTML
    )
    untitled = target_server.route(
        "/untitled", chunks=[b"<html><head>"], never_close=True, content_type=HTML
    )

    started = time.monotonic()
    answer = (await post_titles(capped.client, [titled, untitled])).json()
    took_s = time.monotonic() - started

    assert answer["titles"] == ["Streaming", None]
    assert answer["results"][1]["status"] == "timeout"
    assert took_s <= CAP_S + SLACK_S


async def test_pages_costly_to_read_do_not_hold_the_answer_past_the_cap(
    capped: RunningApp, target_server: TargetServer
) -> None:
    # Reading the title is CPU work: together these pages take seconds, far beyond the cap.
    busy = b"<p>" * (256 * 1024)
    urls = [target_server.route(f"/busy{n}", chunks=[busy], content_type=HTML) for n in range(30)]

    started = time.monotonic()
    response = await post_titles(capped.client, urls)
    took_s = time.monotonic() - started

    assert response.status_code == 200
    assert took_s <= CAP_S + SLACK_S
    assert {result["status"] for result in response.json()["results"]} <= {"timeout", "no_title"}


async def test_a_title_trickling_in_is_read_as_it_arrives(
    capped: RunningApp, target_server: TargetServer
) -> None:
    chunks = [b"<html><head><tit", b"le>Slowly ", b"but surely</title>"] + [b"x" * 1000] * 50
    url = target_server.route("/drip", chunks=chunks, chunk_delay_s=0.1, content_type=HTML)

    result = (await post_titles(capped.client, [url])).json()["results"][0]

    assert result["title"] == "Slowly but surely"
    assert result["elapsed_ms"] < 600


async def test_private_targets_are_refused_when_the_guard_is_on(
    settings: Settings, target_server: TargetServer
) -> None:
    url = target_server.route("/secret", body=page("Internal"), content_type=HTML)
    guarded = settings.model_copy(update={"allow_private_targets": False})

    async with serve_app(guarded) as running:
        answer = (await post_titles(running.client, [url, "localhost:1"])).json()

    for result in answer["results"]:
        assert result["status"] == "error"
        assert result["title"] is None
        assert "refused" in result["error"]
    assert "loopback" in answer["results"][0]["error"]
    assert target_server.hits["/secret"] == 0


async def test_cached_titles_skip_the_network(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    url = target_server.route("/cached", body=page("Remembered"), content_type=HTML)

    first = (await post_titles(api, [url])).json()["results"][0]
    second = (await post_titles(api, [url])).json()["results"][0]

    assert (first["cached"], second["cached"]) == (False, True)
    assert second["title"] == "Remembered"
    assert target_server.hits["/cached"] == 1


async def test_no_cache_when_its_size_is_zero(
    capped: RunningApp, target_server: TargetServer
) -> None:
    url = target_server.route("/uncached", body=page("Fresh"), content_type=HTML)

    for _ in range(2):
        await post_titles(capped.client, [url])

    assert target_server.hits["/uncached"] == 2


async def test_many_sites_at_once(capped: RunningApp) -> None:
    servers = [TargetServer() for _ in range(20)]
    await asyncio.gather(*(server.start() for server in servers))
    try:
        urls = [
            server.route("/", body=page(f"Site {n}"), content_type=HTML, delay_s=0.3)
            for n, server in enumerate(servers)
        ]
        started = time.monotonic()
        answer = (await post_titles(capped.client, urls)).json()
        took_s = time.monotonic() - started
    finally:
        await asyncio.gather(*(server.close() for server in servers))

    assert answer["titles"] == [f"Site {n}" for n in range(20)]
    assert took_s < 0.3 * 3  # concurrent, not one after another


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"domains": []}, "domains is empty"),
        ({"domains": ["ok.example"] * 1001}, "1001 entries; at most 1000"),
        ({"domains": ["example.com", "exa mple.com"]}, "domains[1] 'exa mple.com'"),
        ({"domains": ["example.com", "ftp://example.com"]}, "domains[1] 'ftp://example.com'"),
        ({"domains": ["a" * 64 + ".com"]}, "label longer than 63"),
        ({"domains": ["x" * 3000]}, "domains[0] 'xxxx"),
    ],
)
async def test_bad_input_gets_a_422_naming_the_problem(
    api: httpx.AsyncClient, body: object, detail: str
) -> None:
    response = await api.post("/titles", json=body)

    assert response.status_code == 422
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"domains": "example.com"},
        {"domains": [1, 2]},
        {"domains": None},
        {},
        ["example.com"],
        {"domains": ["example.com"], "timeout": 60},
    ],
)
async def test_a_body_that_is_not_a_list_of_strings_gets_a_422(
    api: httpx.AsyncClient, body: object
) -> None:
    response = await api.post("/titles", json=body)

    assert response.status_code == 422
    assert response.json()["detail"]
