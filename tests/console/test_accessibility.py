"""HTML and accessibility basics of every page: a language, one main heading, a label for each
field, text on each button, alt text on images, and colours with enough contrast."""

import re
from html.parser import HTMLParser

import httpx

from errands.console import charts
from errands.console.templating import static_files
from tests.console.conftest import form_token


class PageOutline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.headings: list[str] = []
        self.field_ids: list[str] = []
        self.label_targets: set[str] = set()
        self.images_without_alt = 0
        self.buttons: list[str] = []
        self._in: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "html":
            self.lang = found.get("lang")
        if tag in ("input", "select", "textarea") and found.get("type") != "hidden":
            self.field_ids.append(found.get("id") or "")
        if tag == "label" and found.get("for"):
            self.label_targets.add(str(found["for"]))
        if tag == "img" and not found.get("alt"):
            self.images_without_alt += 1
        if tag in ("h1", "button"):
            self._in, self._text = tag, ""

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            (self.headings if tag == "h1" else self.buttons).append(self._text.strip())
            self._in = None


def outline(html: str) -> PageOutline:
    parser = PageOutline()
    parser.feed(html)
    return parser


async def test_every_page_has_a_language_one_heading_labelled_fields_and_named_buttons(
    api: httpx.AsyncClient,
) -> None:
    token = await form_token(api, "/console/monitors/new")
    created = await api.post(
        "/console/monitors",
        data={"csrf_token": token, "url": "https://a.example/", "interval_s": "60"},
    )
    timer = (await api.post("/timer", json={"hours": 1, "url": "https://b.example/"})).json()
    paths = [
        "/", "/console/monitors", "/console/monitors/new", created.headers["location"],
        created.headers["location"] + "/edit", "/console/timers", f"/console/timers/{timer['id']}",
        "/console/uploads", "/console/stats", "/console/sign-in",
    ]  # fmt: skip
    for path in paths:
        page = outline((await api.get(path)).text)

        assert page.lang == "en", path
        assert len(page.headings) == 1 and page.headings[0], (path, page.headings)
        assert all(page.field_ids), f"{path}: a field without an id"
        unlabelled = [field for field in page.field_ids if field not in page.label_targets]
        assert unlabelled == [], f"{path}: fields without a label: {unlabelled}"
        assert all(page.buttons), f"{path}: a button without text"
        assert page.images_without_alt == 0, path


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str = "#ffffff") -> float:
    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_text_colours_reach_wcag_aa_and_chart_colours_the_graphics_minimum() -> None:
    css = static_files()["console.css"].body.decode()
    text_colours = dict(re.findall(r"--([a-z]+): (#[0-9a-f]{6});", css))
    assert {"text", "muted", "link", "up", "down"} <= set(text_colours)

    for name, colour in text_colours.items():
        if name != "line":  # the rule between rows, not text
            assert contrast(colour) >= 4.5, (name, colour, contrast(colour))
    assert contrast("#ffffff", "#a40e26") >= 4.5, "white on the red of danger buttons"
    for name in ("up", "down", "degraded", "none", "line"):
        assert contrast(charts.COLOURS[name]) >= 3.0, name
