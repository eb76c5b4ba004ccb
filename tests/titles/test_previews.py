"""Link previews: the fields a chat app shows for a link, their fallbacks, and POST /previews
against real local sites."""

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from errands.config import Settings
from errands.titles.previews import PreviewReader
from tests.fixtures.app import RunningApp, serve_app
from tests.fixtures.targets import TargetServer

HTML = "text/html; charset=utf-8"
PAGE_URL = "https://news.example/articles/42?ref=feed"

FULL_HEAD = b"""<!doctype html>
<html lang="en-GB"><head>
<title>  Article 42 |  News </title>
<meta property="og:title" content="Forty-two, explained">
<meta name="twitter:title" content="Twitter title">
<meta property="og:description" content="Why   the answer is 42.">
<meta name="description" content="Plain description">
<meta property="og:image" content="/images/42.png">
<meta property="og:site_name" content="The News">
<link rel="canonical" href="https://news.example/articles/42">
<link rel="apple-touch-icon" href="/touch.png">
<link rel="shortcut icon" href="static/favicon.ico">
</head><body><h1>Heading</h1>"""


def preview_of(body: bytes, content_type: str = HTML, url: str = PAGE_URL) -> PreviewReader:
    reader = PreviewReader(content_type, url)
    for start in range(0, len(body), 512):
        if reader.feed(body[start : start + 512]):
            break
    return reader


def test_every_field_of_a_page_with_open_graph() -> None:
    preview = preview_of(FULL_HEAD).result()

    assert preview.title == "Article 42 | News"
    assert (preview.preview_title, preview.preview_title_from) == (
        "Forty-two, explained",
        "og:title",
    )
    assert preview.og_title == "Forty-two, explained"
    assert preview.description == "Why the answer is 42."
    assert preview.image == "https://news.example/images/42.png"
    assert preview.canonical == "https://news.example/articles/42"
    assert preview.lang == "en-GB"
    assert preview.site_name == "The News"
    assert preview.favicon == "https://news.example/articles/static/favicon.ico"


@pytest.mark.parametrize(
    ("head", "title", "source"),
    [
        (
            b'<meta name="twitter:title" content="From Twitter"><title>T</title>',
            "From Twitter",
            "twitter:title",
        ),
        (b"<title>Only a title</title><meta name=description content=d>", "Only a title", "title"),
        (b"<title> </title></head><body><p>x<h1>The <b>heading</b></h1>", "The heading", "h1"),
        (b"</head><body><p>nothing to call it", None, None),
    ],
)
def test_the_preview_title_falls_back_as_link_previews_do(
    head: bytes, title: str | None, source: str | None
) -> None:
    preview = preview_of(b"<html><head>" + head).result()
    assert (preview.preview_title, preview.preview_title_from) == (title, source)


def test_fallbacks_of_description_image_canonical_and_site_name() -> None:
    head = b"""<head><base href="https://cdn.example/base/">
    <meta name="twitter:description" content="tw description">
    <meta name="twitter:image" content="card.jpg">
    <meta property="og:url" content="/from-og-url">
    <meta name="application-name" content="App">
    <meta http-equiv="content-language" content="de">
    <link rel="icon" href="javascript:alert(1)"><link rel="apple-touch-icon" href="t.png">
    </head><body>"""
    preview = preview_of(head).result()

    assert preview.description == "tw description"
    assert preview.image == "https://cdn.example/base/card.jpg"
    assert preview.canonical == "https://cdn.example/from-og-url"
    assert preview.site_name == "App"
    assert preview.lang == "de"
    assert preview.favicon == "https://cdn.example/base/t.png"


def test_a_page_with_no_icon_gets_the_sites_favicon_ico() -> None:
    preview = preview_of(b"<title>x</title><body>").result()
    assert preview.favicon == "https://news.example/favicon.ico"
    assert (preview.og_title, preview.image, preview.canonical, preview.lang) == (
        None,
        None,
        None,
        None,
    )


def test_reading_stops_once_the_head_is_read() -> None:
    body = FULL_HEAD + b"<p>" + b"body text " * 100_000
    reader = PreviewReader(HTML, PAGE_URL)
    fed = 0
    for start in range(0, len(body), 8192):
        fed += 8192
        if reader.feed(body[start : start + 8192]):
            break
    assert fed <= 3 * 8192
    assert reader.result().og_title == "Forty-two, explained"


def test_an_xhtml_or_svg_document_has_only_its_title() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><title>Chart</title></svg>'
    preview = preview_of(svg, "image/svg+xml").result()
    assert (preview.title, preview.preview_title, preview.favicon) == ("Chart", "Chart", None)


# --- POST /previews against local sites --------------------------------------------------------


@pytest.fixture
async def capped(settings: Settings) -> AsyncIterator[RunningApp]:
    async with serve_app(settings.model_copy(update={"titles_timeout_s": 1.0})) as running:
        yield running


async def post_previews(client: httpx.AsyncClient, urls: object) -> httpx.Response:
    return await client.post("/previews", json={"urls": urls})


async def test_previews_in_input_order(api: httpx.AsyncClient, target_server: TargetServer) -> None:
    article = target_server.route("/article", body=FULL_HEAD, content_type=HTML)
    plain = target_server.route("/plain", body=b"<title>Plain page</title>", content_type=HTML)
    missing = target_server.route(
        "/gone", status=404, body=b"<title>404</title>", content_type=HTML
    )
    image = target_server.route("/logo.png", body=b"\x89PNG....", content_type="image/png")

    response = await post_previews(api, [plain, article, missing, image])

    assert response.status_code == 200
    previews = response.json()["previews"]
    assert [p["entry"] for p in previews] == [plain, article, missing, image]
    assert [p["status"] for p in previews] == ["read", "read", "error", "not_a_page"]
    origin = article.removesuffix("/article")
    assert previews[1] | {"elapsed_ms": 0} == {
        "entry": article,
        "url": article,
        "status": "read",
        "error": None,
        "elapsed_ms": 0,
        "title": "Article 42 | News",
        "preview_title": "Forty-two, explained",
        "preview_title_from": "og:title",
        "og_title": "Forty-two, explained",
        "description": "Why the answer is 42.",
        "image": f"{origin}/images/42.png",
        "canonical": "https://news.example/articles/42",
        "lang": "en-GB",
        "site_name": "The News",
        "favicon": f"{origin}/static/favicon.ico",
    }
    assert previews[0]["preview_title"] == "Plain page"
    assert previews[0]["favicon"] == f"{origin}/favicon.ico"
    assert "404" in previews[2]["error"]
    assert previews[3]["title"] is None


async def test_a_redirected_page_resolves_links_against_where_it_landed(
    api: httpx.AsyncClient, target_server: TargetServer
) -> None:
    landing = target_server.route(
        "/new/home",
        body=b'<title>x</title><meta property="og:image" content="pic.png">',
        content_type=HTML,
    )
    moved = target_server.route("/old", redirect_to=landing)

    [preview] = (await post_previews(api, [moved])).json()["previews"]

    assert preview["url"] == landing
    assert preview["image"] == landing.removesuffix("home") + "pic.png"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"urls": []}, "urls is empty"),
        ({"urls": ["ftp://example.com/"]}, "urls[0]"),
        ({"urls": ["example.com"], "extra": 1}, "extra"),
        ({"domains": ["example.com"]}, "urls"),
        ({"urls": "example.com"}, "urls"),
    ],
)
async def test_bad_requests_get_a_clear_422(
    api: httpx.AsyncClient, body: object, fragment: str
) -> None:
    response = await api.post("/previews", json=body)
    assert response.status_code == 422
    assert fragment in str(response.json()["detail"])


async def test_too_many_urls_are_refused(settings: Settings) -> None:
    async with serve_app(settings.model_copy(update={"titles_max_domains": 2})) as running:
        response = await post_previews(running.client, ["a.example", "b.example", "c.example"])
    assert response.status_code == 422
    assert "at most 2" in response.json()["detail"]


async def test_a_slow_site_is_marked_timeout_within_the_cap(
    capped: RunningApp, target_server: TargetServer
) -> None:
    fast = target_server.route("/fast", body=FULL_HEAD, content_type=HTML)
    slow = target_server.route("/slow", body=FULL_HEAD, content_type=HTML, delay_s=30)

    started = time.monotonic()
    previews = (await post_previews(capped.client, [slow, fast])).json()["previews"]

    assert time.monotonic() - started <= 1.0 + 0.3
    assert [p["status"] for p in previews] == ["timeout", "read"]
    assert previews[1]["og_title"] == "Forty-two, explained"


async def test_private_targets_are_refused_when_the_guard_is_on(
    settings: Settings, target_server: TargetServer
) -> None:
    url = target_server.route("/secret", body=FULL_HEAD, content_type=HTML)
    guarded = settings.model_copy(update={"allow_private_targets": False})

    async with serve_app(guarded) as running:
        [preview] = (await post_previews(running.client, [url])).json()["previews"]

    assert preview["status"] == "error"
    assert "refused" in preview["error"]
    assert preview["og_title"] is None
    assert target_server.hits["/secret"] == 0
