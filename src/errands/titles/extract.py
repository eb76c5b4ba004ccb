"""A page's title as a browser computes `document.title`, from bytes fed as they arrive.

No I/O here: `TitleReader` takes body chunks and says when the title is complete.
"""

import codecs
import html
import re
from html.parser import HTMLParser

__all__ = ["TitleReader", "charset_from_content_type", "collapse_whitespace", "sniff_charset"]

# Browsers look for <meta charset> in the first 1024 bytes only (the HTML "prescan").
PRESCAN_BYTES = 1024

# WHATWG encoding labels that Python names differently or that browsers deliberately widen:
# latin-1 and ASCII pages are decoded as windows-1252, as every browser does.
_BROWSER_ENCODINGS = {
    "ascii": "cp1252",
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
_BROWSER_LABELS = {"x-sjis": "cp932", "x-gbk": "gb18030", "x-user-defined": "cp1252"}

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_COMMENT = re.compile(rb"<!--.*?(?:-->|\Z)", re.DOTALL)
_META_TAG = re.compile(rb"<meta[\s/]([^>]*)", re.IGNORECASE)
_ATTRIBUTE = re.compile(
    rb"""([^\s"'>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]*))?""",
)
_ASCII_WHITESPACE = re.compile(r"[\t\n\f\r ]+")

# Elements whose content is text, not markup, so a <title> written inside is not an element.
_RAW_TEXT_ELEMENTS = frozenset({"iframe", "noembed", "noframes", "noscript", "textarea", "xmp"})
# Inside these, <title> belongs to SVG or MathML, not to the document.
_FOREIGN_ELEMENTS = frozenset({"svg", "math"})


def browser_encoding(label: str) -> str | None:
    """The Python codec a browser would use for an encoding label, or None if unknown."""
    label = label.strip().lower()
    if label in _BROWSER_LABELS:
        return _BROWSER_LABELS[label]
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return _BROWSER_ENCODINGS.get(name, name)


def charset_from_content_type(content_type: str | None) -> str | None:
    """The codec named by a Content-Type header's charset parameter, if any is usable."""
    if not content_type:
        return None
    match = _CHARSET_PARAM.search(content_type)
    return browser_encoding(match.group(1)) if match else None


def sniff_charset(head: bytes) -> str | None:
    """The codec declared by `<meta charset>` or `<meta http-equiv content-type>` in `head`."""
    for tag in _META_TAG.finditer(_COMMENT.sub(b"", head[:PRESCAN_BYTES])):
        attributes: dict[bytes, bytes] = {}
        for name, value in _ATTRIBUTE.findall(tag.group(1)):
            attributes.setdefault(name.lower(), value.strip(b"\"'"))
        label: bytes | None = attributes.get(b"charset")
        if label is None and attributes.get(b"http-equiv", b"").lower() == b"content-type":
            match = _CHARSET_PARAM.search(attributes.get(b"content", b"").decode("latin-1"))
            label = match.group(1).encode("latin-1") if match else None
        if label:
            encoding = browser_encoding(label.decode("latin-1"))
            if encoding is not None:
                # A page cannot declare UTF-16 in its own ASCII-compatible bytes.
                return "utf-8" if encoding.startswith("utf-16") else encoding
    return None


def collapse_whitespace(text: str) -> str:
    """Strip and collapse ASCII whitespace, as `document.title` does (not NBSP)."""
    return _ASCII_WHITESPACE.sub(" ", text).strip("\t\n\f\r ")


class _TitleParser(HTMLParser):
    """Finds the first HTML <title> element and keeps its raw text until </title>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.foreign_depth = 0
        self.in_title = False
        self.done = False
        self.pieces: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done or self.in_title:
            return
        if tag in _FOREIGN_ELEMENTS:
            self.foreign_depth += 1
        elif tag == "title" and self.foreign_depth == 0:
            self.in_title = True
            # Title content is text with character references, never markup (RCDATA).
            self.set_cdata_mode("title")
        elif tag in _RAW_TEXT_ELEMENTS:
            self.set_cdata_mode(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # A self-closed <svg/> opens nothing; a self-closed <title/> in HTML still opens one.
        if tag not in _FOREIGN_ELEMENTS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self.in_title and tag == "title":
            self.in_title = False
            self.done = True
        elif tag in _FOREIGN_ELEMENTS and self.foreign_depth > 0:
            self.foreign_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.pieces.append(data)

    def finish(self) -> None:
        """End of input: an unclosed <title> runs to the end of the document."""
        self.close()
        if self.in_title:
            self.pieces.append(self.rawdata)
            self.rawdata = ""


class TitleReader:
    """Feed a response body chunk by chunk; `feed` returns True once the title is complete.

    The encoding is chosen as a browser does: a byte order mark, then the Content-Type header,
    then a `<meta>` declaration in the first 1024 bytes, then UTF-8 if the bytes decode as
    UTF-8, else windows-1252.
    """

    def __init__(self, content_type: str | None = None) -> None:
        self._header_encoding = charset_from_content_type(content_type)
        self._head = bytearray()  # bytes held until the encoding is known
        self._encoding: str | None = None
        self._tentative_utf8 = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._parser = _TitleParser()

    @property
    def encoding(self) -> str | None:
        """The encoding chosen, once enough bytes have been seen."""
        return self._encoding

    @property
    def done(self) -> bool:
        return self._parser.done

    def feed(self, chunk: bytes) -> bool:
        if self.done:
            return True
        if self._decoder is None or self._tentative_utf8:
            self._head += chunk
        if self._decoder is None:
            if not self._choose_encoding(final=False):
                return False
            self._decode(bytes(self._head), final=False)
        else:
            self._decode(chunk, final=False)
        return self.done

    def title(self) -> str | None:
        """End of input (or of what will be read): the title, or None when there is none."""
        if not self.done:
            if self._decoder is None:
                self._choose_encoding(final=True)
                self._decode(bytes(self._head), final=True)
            # Otherwise bytes still in the decoder are a character cut off by the read cap.
            self._parser.finish()
        text = collapse_whitespace(html.unescape("".join(self._parser.pieces)))
        return text or None

    def _choose_encoding(self, *, final: bool) -> bool:
        head = bytes(self._head)
        for bom, encoding in _BOMS:
            if head.startswith(bom):
                self._start(encoding, skip=len(bom))
                return True
        if len(head) < len(codecs.BOM_UTF8) and not final:
            return False  # a BOM may still be arriving
        if self._header_encoding is not None:
            self._start(self._header_encoding)
            return True
        if len(head) < PRESCAN_BYTES and not final:
            return False
        declared = sniff_charset(head)
        if declared is not None:
            self._start(declared)
        else:
            self._tentative_utf8 = True
            self._start("utf-8")
        return True

    def _start(self, encoding: str, *, skip: int = 0) -> None:
        self._encoding = encoding
        # Undecodable bytes become U+FFFD, as in a browser; only tentative UTF-8 is strict.
        errors = "strict" if self._tentative_utf8 else "replace"
        self._decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
        del self._head[:skip]

    def _decode(self, data: bytes, *, final: bool) -> None:
        assert self._decoder is not None
        try:
            text = self._decoder.decode(data, final=final)
        except UnicodeDecodeError:
            # Not UTF-8 after all: start over from the first byte as windows-1252.
            self._tentative_utf8 = False
            self._start("cp1252")
            self._parser = _TitleParser()
            text = self._decoder.decode(bytes(self._head), final=final)
            self._head.clear()
        if not self._tentative_utf8:
            self._head.clear()
        self._parser.feed(text)
