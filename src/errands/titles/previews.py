"""Link previews: what a chat or social app shows for a link, read from the page's <head>.

Fallbacks follow the link-preview tools people use (Open Graph first, then Twitter cards, then
plain HTML). No I/O here: `PreviewReader` takes body chunks like `TitleReader`.
"""

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

from errands.titles.extract import (
    SENTINEL,
    PageReader,
    PartialPage,
    XmlTitle,
    collapse_whitespace,
    document_kind,
    html_title,
    parse_html,
)

__all__ = ["LinkPreview", "PreviewReader", "TitleSource", "link_preview"]

TitleSource = Literal["og:title", "twitter:title", "title", "h1"]

_ASCII_WHITESPACE = "\t\n\f\r "
_ICON_RELS = ("icon", "apple-touch-icon", "apple-touch-icon-precomposed")


@dataclass(frozen=True)
class LinkPreview:
    title: str | None  # document.title
    preview_title: str | None  # og:title, else twitter:title, else document.title, else <h1>
    preview_title_from: TitleSource | None
    og_title: str | None
    description: str | None
    image: str | None
    canonical: str | None
    lang: str | None
    site_name: str | None
    favicon: str | None


def link_preview(tree: LexborHTMLParser, url: str) -> LinkPreview:
    """The preview of the page at `url` whose tree is `tree`; links come back absolute."""
    metas: dict[str, str] = {}
    for meta in tree.css("meta[content]"):
        attributes = meta.attributes
        key = (
            attributes.get("property") or attributes.get("name") or attributes.get("http-equiv")
        ) or ""
        content = collapse_whitespace(meta.attributes.get("content") or "")
        if key.strip() and content:
            metas.setdefault(key.strip().lower(), content)
    base = url
    for element in tree.css("base[href]"):
        base = _absolute(url, element.attributes.get("href")) or url
        break
    title = collapse_whitespace(html_title(tree) or "") or None
    first_h1 = tree.css_first("h1")
    h1 = collapse_whitespace(first_h1.text()) if first_h1 is not None else ""
    candidates: list[tuple[TitleSource, str | None]] = [
        ("og:title", metas.get("og:title")),
        ("twitter:title", metas.get("twitter:title")),
        ("title", title),
        ("h1", h1 or None),
    ]
    preview_from, preview_title = next(
        ((source, text) for source, text in candidates if text), (None, None)
    )
    html = tree.css_first("html")
    lang = (html.attributes.get("lang") or "").strip() if html is not None else ""
    return LinkPreview(
        title=title,
        preview_title=preview_title,
        preview_title_from=preview_from,
        og_title=metas.get("og:title"),
        description=_first(metas, "og:description", "twitter:description", "description"),
        image=_absolute(
            base,
            _first(metas, "og:image", "og:image:url", "og:image:secure_url", "twitter:image")
            or metas.get("twitter:image:src"),
        ),
        canonical=_link(tree, base, ("canonical",)) or _absolute(base, metas.get("og:url")),
        lang=lang or metas.get("content-language") or None,
        site_name=_first(metas, "og:site_name", "application-name"),
        favicon=_link(tree, base, _ICON_RELS) or _absolute(url, "/favicon.ico"),
    )


def _first(metas: dict[str, str], *keys: str) -> str | None:
    return next((metas[key] for key in keys if key in metas), None)


def _link(tree: LexborHTMLParser, base: str, rels: tuple[str, ...]) -> str | None:
    """The absolute http(s) href of the first <link> whose rel has the earliest-listed of
    `rels`."""
    links = [
        (set((link.attributes.get("rel") or "").lower().split()), link.attributes.get("href"))
        for link in tree.css("link[rel][href]")
    ]
    for rel in rels:
        for tokens, href in links:
            if rel in tokens and (absolute := _absolute(base, href)) is not None:
                return absolute
    return None


def _absolute(base: str, href: str | None) -> str | None:
    """`href` resolved against `base`, if it is an http(s) URL (not javascript:, data:...)."""
    if not href:
        return None
    try:
        resolved = urljoin(base, href.strip())
        scheme = urlsplit(resolved).scheme
    except ValueError:  # a malformed IPv6 host, say
        return None
    return resolved if scheme in ("http", "https") else None


class PreviewReader(PageReader):
    """Feed a response body chunk by chunk; `feed` returns True once the preview is complete:
    the head has been read and a title was found (or the first <h1> closed)."""

    def __init__(self, content_type: str | None, url: str) -> None:
        self.url = url
        self.preview_source: _HtmlPreview | XmlTitle = (
            XmlTitle() if document_kind(content_type) == "xml" else _HtmlPreview()
        )
        super().__init__(content_type, self.preview_source)

    def result(self) -> LinkPreview:
        self.finish()
        source = self.preview_source
        if isinstance(source, _HtmlPreview):
            assert source.tree is not None
            return link_preview(source.tree, self.url)
        title = collapse_whitespace(source.title or "")
        return LinkPreview(
            title=title or None,
            preview_title=title or None,
            preview_title_from="title" if title else None,
            og_title=None,
            description=None,
            image=None,
            canonical=None,
            lang=None,
            site_name=None,
            favicon=None,
        )


class _HtmlPreview:
    """The text read so far, parsed again each time it has grown by half."""

    def __init__(self) -> None:
        self.page = PartialPage()
        self.done = False
        self.tree: LexborHTMLParser | None = None

    def feed(self, text: str) -> None:
        if not text:
            return
        self.page.add(text)
        if not self.page.parse_due:
            return
        tree = self.page.parse_so_far()
        if _head_is_read(tree) and _has_a_finished_title(tree):
            self.tree = tree
            self.done = True

    def finish(self) -> None:
        self.tree = parse_html(self.page.text())
        self.done = True


def _head_is_read(tree: LexborHTMLParser) -> bool:
    """Whether the body has begun: it holds an element or text other than the sentinel."""
    if tree.body is None:
        return False
    for child in tree.body.iter(include_text=True):
        if child.is_element_node:
            return True
        if (child.text_content or "").strip(_ASCII_WHITESPACE + SENTINEL):
            return True
    return False


def _has_a_finished_title(tree: LexborHTMLParser) -> bool:
    for meta in tree.css("meta[content]"):
        key = (meta.attributes.get("property") or meta.attributes.get("name") or "").lower()
        if key in ("og:title", "twitter:title"):
            return True
    title = html_title(tree)
    if title is not None and not title.endswith(SENTINEL):
        return True
    first_h1 = tree.css_first("h1")
    return first_h1 is not None and SENTINEL not in first_h1.text()
