"""A page's title as a browser computes `document.title`, from bytes fed as they arrive.

No I/O here: `TitleReader` takes body chunks and says when the title is complete.
"""

import codecs
import html
import re

__all__ = [
    "TitleReader",
    "browser_encoding",
    "charset_from_content_type",
    "collapse_whitespace",
    "sniff_charset",
]

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
    "utf-16": "utf-16-le",
}
_BROWSER_LABELS = {
    "windows-874": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-sjis": "cp932",
    "x-gbk": "gb18030",
    "x-user-defined": "cp1252",
}
# The encodings of the WHATWG Encoding Standard, the only ones browsers decode pages with. Other
# codecs Python knows (base64, zlib, rot13, utf-7, EBCDIC, ...) are not page encodings: a label
# naming one is unknown, as in a browser.
_PAGE_ENCODINGS = frozenset(
    {
        "utf-8",
        "utf-16-le",
        "utf-16-be",
        "cp866",
        *(f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15, 16)),
        "koi8-r",
        "koi8-u",
        "mac-roman",
        "mac-cyrillic",
        "cp874",
        *(f"cp{n}" for n in range(1250, 1259)),
        "gb18030",
        "big5hkscs",
        "euc_jp",
        "iso2022_jp",
        "cp932",
        "cp949",
    }
)

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
_RAW_TEXT_ELEMENTS = frozenset(
    {"iframe", "noembed", "noframes", "noscript", "script", "style", "textarea", "xmp"}
)
# Inside these, <title> belongs to SVG or MathML, not to the document.
_FOREIGN_ELEMENTS = frozenset({"svg", "math"})

# The pieces of the HTML tokenizer a title needs. In a start tag, a quote opens a quoted value
# only right after "=", and an attribute name may begin with "=", as in the tokenizer; so a
# start tag fails to match only while it is still open. Possessive repeats keep matching linear.
_START_TAG = re.compile(
    r"""<([a-zA-Z][^\t\n\f\r />]*+)"""
    r"""(?:[\t\n\f\r /]++"""
    r"""|[^\t\n\f\r />][^\t\n\f\r /=>]*+"""
    r"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"""
    r"""(?:"[^"]*+"|'[^']*+'|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>))|(?![\t\n\f\r ]*+=)))*+>"""
)
_END_TAG = re.compile(r"</([a-zA-Z][^\t\n\f\r />]*+)[^>]*+>")
_BOGUS_COMMENT = re.compile(r"<(?:[!?]|/[^a-zA-Z])")
_MARKUP_START = re.compile(r"</?[a-zA-Z]")
_COMMENT_END = re.compile(r"--!?>")
_RAW_TEXT_ENDS: dict[str, "re.Pattern[str]"] = {}
FEED_SLICE_BYTES = 8 * 1024
# A tag still open after this much text is given up (see _TitleScanner._markup_end).
MAX_TAG_CHARS = 64 * 1024


def browser_encoding(label: str) -> str | None:
    """The Python codec a browser would use for an encoding label, or None if unknown."""
    label = label.strip().lower()
    if label in _BROWSER_LABELS:
        return _BROWSER_LABELS[label]
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):  # ValueError: a NUL in the label
        return None
    name = _BROWSER_ENCODINGS.get(name, name)
    return name if name in _PAGE_ENCODINGS else None


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


class _TitleScanner:
    """Finds the first HTML <title> element in text fed piece by piece, following the HTML
    tokenizer only as far as titles need: comments, raw-text elements such as <script>, and
    SVG/MathML, whose <title> is not the document's. Markup is skipped, never parsed into
    attributes, which keeps this several times cheaper than a general HTML parser."""

    def __init__(self) -> None:
        self.text = ""
        self.position = 0
        self.foreign_depth = 0
        self.raw_text_of: str | None = None  # the element whose end tag ends the raw text
        self.done = False
        self.pieces: list[str] = []

    def feed(self, text: str) -> None:
        self.text = self.text[self.position :] + text
        self.position = 0
        self._scan(final=False)

    def finish(self) -> None:
        """End of input: an unclosed <title> runs to the end of the document."""
        self._scan(final=True)
        if self.raw_text_of == "title" and not self.done:
            self.pieces.append(self.text[self.position :])

    def _scan(self, *, final: bool) -> None:
        text = self.text
        while not self.done:
            if self.raw_text_of is not None:
                if not self._skip_raw_text(final=final):
                    return
                continue
            start = text.find("<", self.position)
            if start < 0:
                self.position = len(text)
                return
            self.position = start
            end = self._markup_end(start, final=final)
            if end is None:
                return  # the markup is not complete yet
            self.position = end

    def _markup_end(self, start: int, *, final: bool) -> int | None:
        """Act on the markup at `start` and return where it ends, or None to wait for more."""
        text = self.text
        if not final and len(text) - start <= 2 and text[start:] in ("<", "</"):
            return None  # the next read says whether this starts a tag
        if text.startswith("<!--", start):
            found = _COMMENT_END.search(text, start + 2)
            if found is not None:
                return found.end()
            return len(text) if final else None
        opening = _START_TAG.match(text, start)
        if opening is not None:
            self._open(opening.group(1).lower(), self_closing=opening.group(0).endswith("/>"))
            return opening.end()
        closing = _END_TAG.match(text, start)
        if closing is not None:
            if closing.group(1).lower() in _FOREIGN_ELEMENTS and self.foreign_depth > 0:
                self.foreign_depth -= 1
            return closing.end()
        if _BOGUS_COMMENT.match(text, start) is not None:
            found_end = text.find(">", start)
            if found_end >= 0:
                return found_end + 1
            return len(text) if final else None
        if not _MARKUP_START.match(text, start):
            return start + 1  # a "<" that starts no markup is text
        # A tag still open. In a browser it runs to the end of the page; one open this long is
        # given up, its first MAX_TAG_CHARS read as text, so no page makes the reader go over the
        # same text again for every "<" in it.
        if final or len(text) - start > MAX_TAG_CHARS:
            return min(start + MAX_TAG_CHARS, len(text))
        return None

    def _open(self, name: str, *, self_closing: bool) -> None:
        if name in _FOREIGN_ELEMENTS:
            self.foreign_depth += 0 if self_closing else 1
        elif self.foreign_depth == 0 and (name == "title" or name in _RAW_TEXT_ELEMENTS):
            # Title content is text with character references, never markup (RCDATA); HTML
            # ignores a self-closing slash here.
            self.raw_text_of = name

    def _skip_raw_text(self, *, final: bool) -> bool:
        """Move past raw text up to its end tag; False when that end tag has not arrived."""
        name = self.raw_text_of
        assert name is not None
        end_tag = _raw_text_end(name).search(self.text, self.position)
        if end_tag is None:
            if final:
                return False
            # Keep the tail unscanned: it may be the start of an end tag split across reads.
            keep_from = max(self.position, len(self.text) - len(name) - 2)
            if name == "title":
                self.pieces.append(self.text[self.position : keep_from])
            self.position = keep_from
            return False
        if name == "title":
            self.pieces.append(self.text[self.position : end_tag.start()])
            self.done = True
        self.raw_text_of = None
        self.position = end_tag.start() + 2
        return True


def _raw_text_end(name: str) -> "re.Pattern[str]":
    pattern = _RAW_TEXT_ENDS.get(name)
    if pattern is None:
        pattern = _RAW_TEXT_ENDS[name] = re.compile(
            rf"</{re.escape(name)}[\t\n\f\r />]", re.IGNORECASE
        )
    return pattern


class TitleReader:
    """Feed a response body chunk by chunk; `feed` returns True once the title is complete.

    The encoding is chosen as a browser does: a byte order mark, then the Content-Type header,
    then a `<meta>` declaration in the first 1024 bytes, then UTF-8 if the bytes decode as
    UTF-8, else windows-1252.
    """

    def __init__(self, content_type: str | None = None) -> None:
        self._header_encoding = charset_from_content_type(content_type)
        self._head = bytearray()  # bytes held until the encoding is known
        self._tentative_utf8 = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._scanner = _TitleScanner()

    @property
    def done(self) -> bool:
        return self._scanner.done

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes of the body; True once the title is complete."""
        # Network reads bring up to hundreds of KB at once, and titles sit near the start:
        # decoding and scanning in slices stops soon after the title instead of at the read's end.
        view = memoryview(chunk)
        for start in range(0, len(view), FEED_SLICE_BYTES):
            if self._feed(view[start : start + FEED_SLICE_BYTES].tobytes()):
                return True
        return self.done

    def _feed(self, chunk: bytes) -> bool:
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
            self._scanner.finish()
        text = collapse_whitespace(html.unescape("".join(self._scanner.pieces)))
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
            self._scanner = _TitleScanner()
            text = self._decoder.decode(bytes(self._head), final=final)
            self._head.clear()
        if not self._tentative_utf8:
            self._head.clear()
        self._scanner.feed(text)
