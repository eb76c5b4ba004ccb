"""A page's title as a browser computes `document.title`, from bytes fed as they arrive.

HTML is decoded as encoding.py decides and built into a tree by lexbor, the C HTML parser of
selectolax, so the tree is the one a browser builds; XML documents go through expat. No I/O here:
`TitleReader` takes body chunks and says when the title is complete.
"""

import re
import xml.etree.ElementTree as ElementTree
from typing import Literal, Protocol, cast

from selectolax.lexbor import LexborHTMLParser, LexborNode

from errands.titles import encoding
from errands.titles.encoding import Decoder

__all__ = [
    "SENTINEL",
    "Document",
    "DocumentKind",
    "PageReader",
    "PartialPage",
    "TitleReader",
    "XmlTitle",
    "collapse_whitespace",
    "document_kind",
    "html_title",
    "parse_html",
]

DocumentKind = Literal["html", "xml"]

_ASCII_WHITESPACE = re.compile(r"[\t\n\f\r ]+")
_TITLE_START = re.compile(r"<title", re.IGNORECASE)
_TITLE_END = re.compile(r"</title", re.IGNORECASE)
# Appended to a partly read page before parsing it: it lands inside an element (the <title>)
# only while that element is still open, which is how a partial parse tells a finished element
# from a cut one.
SENTINEL = "\uffff"
# A partial page is parsed again only once it has grown by this factor, so a page full of
# "</title" (SVG icons) costs a bounded number of parses: about three times its length.
_REPARSE_GROWTH = 1.5
# Bytes a page that declares no encoding is read before its encoding is guessed from them.
DETECTION_BYTES = 64 * 1024
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
XHTML_NAMESPACE = "http://www.w3.org/1999/xhtml"


def collapse_whitespace(text: str) -> str:
    """Strip and collapse ASCII whitespace, as `document.title` does (not NBSP)."""
    return _ASCII_WHITESPACE.sub(" ", text).strip("\t\n\f\r ")


def document_kind(content_type: str | None) -> DocumentKind | None:
    """How a browser parses a response of this type, or None when it holds no title."""
    if not content_type:
        return "html"  # a browser sniffs; pages without a type are nearly always HTML
    mime = content_type.partition(";")[0].strip().lower()
    if mime == "text/html":
        return "html"
    if mime in ("text/xml", "application/xml") or mime.endswith("+xml"):
        return "xml"
    return None


def html_title(tree: LexborHTMLParser) -> str | None:
    """The child text of the document's first `title` element in the HTML namespace."""
    for node in tree.css("title"):
        if _in_html_namespace(node):
            return "".join(
                child.text_content or ""
                for child in node.iter(include_text=True)
                if child.is_text_node
            )
    return None


def _in_html_namespace(node: LexborNode) -> bool:
    # selectolax shows an element's namespace only in its serialisation: <svg:title ...>.
    opening = node.html_pretty(tag_with_ns=True, without_closing=True) or ""
    return opening.startswith("<title")


class Document(Protocol):
    """What reads a page's text as it is decoded, and says when it has seen enough."""

    done: bool

    def feed(self, text: str) -> None: ...

    def finish(self) -> None: ...


class PageReader:
    """Decodes a response body as a browser would, chunk by chunk, into a Document."""

    def __init__(self, content_type: str | None, document: Document) -> None:
        self.kind = document_kind(content_type)
        self._header_encoding = encoding.encoding_from_content_type(content_type)
        self._head = bytearray()  # bytes held until the encoding is known
        self._decode: Decoder | None = None
        self.document = document

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes of the body; True once the document has read enough."""
        if self.document.done:
            return True
        if self._decode is None:
            self._head += chunk
            if not self._choose_encoding(final=False):
                return False
            chunk = bytes(self._head)
            self._head.clear()
        self._read(chunk, final=False)
        return self.document.done

    def finish(self) -> None:
        """End of input, or of what will be read."""
        if self.document.done:
            return
        if self._decode is None:
            self._choose_encoding(final=True)
            self._read(bytes(self._head), final=True)
        # Otherwise bytes still in the decoder are a character cut off by the read cap.
        self.document.finish()

    def _read(self, data: bytes, *, final: bool) -> None:
        assert self._decode is not None
        try:
            self.document.feed(self._decode(data, final))
        except encoding.MalformedBytes as malformed:
            # An encoding error is fatal in XML: the document ends where it is.
            self.document.feed(malformed.decoded)
            self.document.finish()

    def _choose_encoding(self, *, final: bool) -> bool:
        head = bytes(self._head)
        bom = encoding.encoding_from_bom(head)
        if bom is not None:
            name, skip = bom
            del self._head[:skip]
            return self._start(name)
        if len(head) < 3 and not final:
            return False  # a byte order mark may still be arriving
        if self._header_encoding is not None:
            return self._start(self._header_encoding)
        xml_declaration = encoding.encoding_from_xml_declaration(head)
        if xml_declaration is False and not final:
            return False
        declared = xml_declaration if isinstance(xml_declaration, str) else None
        if self.kind == "xml":
            return self._start(declared or "utf-8")
        if declared in ("utf-16le", "utf-16be"):
            return self._start(declared)  # "<?x" in UTF-16: Chromium looks no further
        found = encoding.prescan(head, final=final)
        if found is False:
            return False
        if found is None:
            found = declared  # a <meta> charset wins over the XML declaration, as in Chromium
        if found is None:
            if len(head) < DETECTION_BYTES and not final:
                return False
            found = encoding.detect_encoding(head)
        return self._start(found)

    def _start(self, name: str) -> bool:
        self._decode = encoding.make_decoder(name, fatal=self.kind == "xml")
        return True


class TitleReader(PageReader):
    """Feed a response body chunk by chunk; `feed` returns True once the title is complete."""

    def __init__(self, content_type: str | None = None) -> None:
        kind = document_kind(content_type)
        self.title_source: _HtmlTitle | XmlTitle | _NoTitle = (
            _HtmlTitle() if kind == "html" else XmlTitle() if kind == "xml" else _NoTitle()
        )
        super().__init__(content_type, self.title_source)

    def result(self) -> str | None:
        """The title, or None when there is none."""
        self.finish()
        text = collapse_whitespace(self.title_source.title or "")
        return text or None


class _NoTitle:
    """A response a browser does not show as a document with a title (text/plain, images)."""

    done = True
    title = None

    def feed(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


class PartialPage:
    """The text of a page read so far, and its tree as far as it goes."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.length = 0
        self.parsed_length = 0

    def add(self, text: str) -> None:
        self.pieces.append(text)
        self.length += len(text)

    @property
    def parse_due(self) -> bool:
        return self.length >= self.parsed_length * _REPARSE_GROWTH

    def parse_so_far(self) -> LexborHTMLParser:
        """The tree of the text read, followed by SENTINEL."""
        self.parsed_length = self.length
        return parse_html(self.text() + SENTINEL)

    def text(self) -> str:
        return "".join(self.pieces)


class _HtmlTitle:
    """The text read so far, parsed whole once a `</title` suggests the title may be in it."""

    def __init__(self) -> None:
        self.page = PartialPage()
        self.tail = ""  # the last characters seen, for an end tag split across chunks
        self.unparsed_end_tag = False  # a "</title" arrived since the last parse
        self.done = False
        self.title: str | None = None

    def feed(self, text: str) -> None:
        if not text:
            return
        self.page.add(text)
        window = self.tail + text
        self.tail = window[-len("</title") :]
        self.unparsed_end_tag = self.unparsed_end_tag or _TITLE_END.search(window) is not None
        if not self.unparsed_end_tag or not self.page.parse_due:
            return
        self.unparsed_end_tag = False
        title = html_title(self.page.parse_so_far())
        if title is not None and not title.endswith(SENTINEL):
            self.title = title
            self.done = True

    def finish(self) -> None:
        text = self.page.text()
        # Without a "<title" there is no title element: the tree need not be built.
        if _TITLE_START.search(text) is not None:
            self.title = html_title(parse_html(text))
        self.done = True


def parse_html(text: str) -> LexborHTMLParser:
    """The tree a browser builds. It runs scripts, so <noscript> holds text, not markup."""
    return LexborHTMLParser(text, scripting=True)


class XmlTitle:
    """document.title of an XML document: an SVG root's own <svg:title> child, else the first
    XHTML <title>; feeds and other XML have none. Parsing stops at the first error, keeping
    what was read before it, as a browser shows the document up to the error."""

    def __init__(self) -> None:
        self.parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(
            events=("start", "end")
        )
        self.depth = 0
        self.svg_root = False
        self.done = False
        self.title: str | None = None

    def feed(self, text: str) -> None:
        if self.done:
            return
        try:
            self.parser.feed(text)
            self._read_events()
        except ElementTree.ParseError:
            self.done = True

    def finish(self) -> None:
        if not self.done:
            try:
                self.parser.close()
                self._read_events()
            except ElementTree.ParseError:
                pass
        self.done = True

    def _read_events(self) -> None:
        for item in self.parser.read_events():
            event, element = cast("tuple[str, object]", item)
            if not isinstance(element, ElementTree.Element):
                continue  # only start and end events are asked for
            if event == "start":
                if self.depth == 0:
                    self.svg_root = element.tag == f"{{{SVG_NAMESPACE}}}svg"
                self.depth += 1
                continue
            self.depth -= 1
            wanted = (
                (self.depth == 1 and element.tag == f"{{{SVG_NAMESPACE}}}title")
                if self.svg_root
                else element.tag == f"{{{XHTML_NAMESPACE}}}title"
            )
            if wanted:
                self.title = (element.text or "") + "".join(child.tail or "" for child in element)
                self.done = True
                return
