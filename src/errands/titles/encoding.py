"""Which encoding a browser decodes a page with: the WHATWG encoding sniffing algorithm, as
Chromium runs it.

Order: a byte order mark, the Content-Type charset, an XML declaration (Chromium honours one
on text/html too), the `<meta>` prescan, then detection from the bytes. Labels are looked up in
the Encoding Standard's table and decoded as the standard decodes them.
"""

import codecs
import re
from collections.abc import Callable
from functools import cache
from typing import Literal

import chardetng_py
import webencodings

__all__ = [
    "Decoder",
    "MalformedBytes",
    "detect_encoding",
    "encoding_from_bom",
    "encoding_from_content_type",
    "encoding_from_xml_declaration",
    "lookup_label",
    "make_decoder",
    "prescan",
]

Decoder = Callable[[bytes, bool], str]

# Encoding Standard names -> the Python codec that decodes them (or a table built below).
_MULTI_BYTE_CODECS = {
    "utf-8": "utf-8",
    "utf-16le": "utf-16-le",
    "utf-16be": "utf-16-be",
    # The standard's decoders are supersets of the narrow legacy tables: GBK is decoded as
    # gb18030, Shift_JIS as Microsoft's extension, Big5 with HKSCS, EUC-KR as windows-949.
    "gbk": "gb18030",
    "gb18030": "gb18030",
    "big5": "big5hkscs",
    "euc-jp": "euc_jp",
    "iso-2022-jp": "iso2022_jp",
    "shift_jis": "cp932",
    "euc-kr": "cp949",
}
_SINGLE_BYTE_CODECS = {
    "ibm866": "cp866",
    "koi8-r": "koi8_r",
    "koi8-u": "koi8_u",
    "macintosh": "mac_roman",
    "x-mac-cyrillic": "mac_cyrillic",
    "windows-874": "cp874",
    "iso-8859-8-i": "iso8859_8",
    **{f"iso-8859-{n}": f"iso8859_{n}" for n in (2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15, 16)},
    **{f"windows-{n}": f"cp{n}" for n in range(1250, 1259)},
}

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16le"),
    (codecs.BOM_UTF16_BE, "utf-16be"),
)
_CHARSET_PARAMETER = re.compile(r"""charset\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s;"']+))""", re.I)
_XML_ENCODING = re.compile(rb"""encoding\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_ASCII_WHITESPACE = b"\t\n\f\r "

# The prescan looks at this many bytes whatever it meets; Chromium goes on past them while it
# is still among the tags a <head> may hold.
PRESCAN_BYTES = 1024
_HEAD_TAGS = frozenset(
    {b"script", b"noscript", b"style", b"link", b"meta", b"object", b"title", b"base"}
)
# Chromium's prescan runs a tokenizer, so text inside these is not read as tags.
_RAW_TEXT_TAGS = frozenset(
    {
        b"script",
        b"style",
        b"title",
        b"textarea",
        b"noscript",
        b"xmp",
        b"iframe",
        b"noembed",
        b"noframes",
    }
)
_TAG_NAME_END = re.compile(rb"[\t\n\f\r />]")
_VALUE_END = re.compile(rb"[\t\n\f\r >]")
_WHITESPACE = frozenset(_ASCII_WHITESPACE)
_SPACE_OR_SLASH = frozenset(_ASCII_WHITESPACE + b"/")


def lookup_label(label: str | bytes) -> str | None:
    """The Encoding Standard's name for an encoding label, or None when it names none."""
    if isinstance(label, bytes):
        label = label.decode("latin-1")
    found: str | None = webencodings.LABELS.get(label.strip("\t\n\f\r ").lower())
    return found


def encoding_from_bom(head: bytes) -> tuple[str, int] | None:
    """The encoding a byte order mark names and the mark's length."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name, len(bom)
    return None


def encoding_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    match = _CHARSET_PARAMETER.search(content_type)
    if match is None:
        return None
    return lookup_label(next(group for group in match.groups() if group is not None))


def encoding_from_xml_declaration(head: bytes) -> str | Literal[False] | None:
    """Chromium's XML declaration check, run on HTML too: the encoding it names, None when
    there is none to honour, or False while the declaration has not fully arrived."""
    if head.startswith(b"<?xml"):
        end = head.find(b">")
        if end < 0:
            return False
        match = _XML_ENCODING.search(head, 5, end)
        if match is None:
            return None
        name = lookup_label(match.group(1) if match.group(1) is not None else match.group(2))
        return _ascii_compatible(name) if name is not None else None
    if head.startswith(b"<\0?\0x\0"):
        return "utf-16le"
    if head.startswith(b"\0<\0?\0x"):
        return "utf-16be"
    return None


def _ascii_compatible(name: str) -> str:
    """A page cannot declare UTF-16 in its own ASCII bytes; x-user-defined means windows-1252."""
    if name in ("utf-16le", "utf-16be"):
        return "utf-8"
    return "windows-1252" if name == "x-user-defined" else name


class _CutShort(Exception):
    """The bytes ran out inside the construct being read."""


def prescan(head: bytes, *, final: bool) -> str | Literal[False] | None:
    """The HTML prescan for a `<meta>` charset: the encoding found, None when the scan ended
    without one, or False when it needs more bytes to decide."""
    try:
        return _prescan(head)
    except _CutShort:
        return None if final else False


def _prescan(head: bytes) -> str | None:
    position = 0
    while True:
        position = head.find(b"<", position)
        if position < 0:
            raise _CutShort
        if head.startswith(b"<!--", position):
            position = _find(head, b"-->", position + 2) + 3
            continue
        after = _byte_at(head, position + 1)
        closing = after == 0x2F  # "/"
        name_start = position + 2 if closing else position + 1
        if _is_ascii_letter(_byte_at(head, name_start)):
            name_end = _TAG_NAME_END.search(head, name_start)
            if name_end is None:
                raise _CutShort
            name = head[name_start : name_end.start()].lower()
            if position >= PRESCAN_BYTES and name not in _HEAD_TAGS:
                return None
            if name == b"meta" and not closing and head[name_end.start()] != 0x3E:
                encoding, position = _meta(head, name_end.start())
                if encoding is not None:
                    return encoding
                continue
            position = name_end.start()
            while (attribute := _get_attribute(head, position)) is not None:
                _, _, position = attribute
            if not closing and name in _RAW_TEXT_TAGS:
                end_tag = _end_tag(name).search(head, position)
                if end_tag is None:
                    raise _CutShort
                position = end_tag.start()
            continue
        if after in (0x21, 0x2F, 0x3F):  # "<!", "</", "<?"
            position = _find(head, b">", position) + 1
            continue
        position += 1


def _meta(head: bytes, position: int) -> tuple[str | None, int]:
    """The encoding a `<meta>` tag declares, and where the scan goes on."""
    seen: set[bytes] = set()
    got_pragma = False
    need_pragma: bool | None = None
    charset: str | None = None
    while (attribute := _get_attribute(head, position)) is not None:
        name, value, position = attribute
        if name in seen:
            continue
        seen.add(name)
        if name == b"http-equiv" and value == b"content-type":
            got_pragma = True
        elif name == b"content" and charset is None:
            label = _charset_in_meta_content(value)
            if label is not None:
                charset = lookup_label(label)
                need_pragma = True
        elif name == b"charset":
            charset = lookup_label(value)
            need_pragma = False
    if need_pragma is None or (need_pragma and not got_pragma) or charset is None:
        return None, position
    return _ascii_compatible(charset), position


def _get_attribute(head: bytes, position: int) -> tuple[bytes, bytes, int] | None:
    """The prescan's "get an attribute": (name, value, position after it), or None at `>`."""
    while _byte_at(head, position) in _SPACE_OR_SLASH:
        position += 1
    if _byte_at(head, position) == 0x3E:
        return None
    name = bytearray()
    while True:
        byte = _byte_at(head, position)
        if byte == 0x3D and name:
            position += 1
            break
        if byte in _WHITESPACE:
            while _byte_at(head, position) in _WHITESPACE:
                position += 1
            if _byte_at(head, position) != 0x3D:
                return bytes(name), b"", position
            position += 1
            break
        if byte in (0x2F, 0x3E):
            return bytes(name), b"", position
        name.append(_lower(byte))
        position += 1
    while _byte_at(head, position) in _WHITESPACE:
        position += 1
    byte = _byte_at(head, position)
    if byte in (0x22, 0x27):
        end = _find(head, bytes([byte]), position + 1)
        return bytes(name), head[position + 1 : end].lower(), end + 1
    if byte == 0x3E:
        return bytes(name), b"", position
    value_end = _VALUE_END.search(head, position)
    if value_end is None:
        raise _CutShort
    return bytes(name), head[position : value_end.start()].lower(), value_end.start()


def _charset_in_meta_content(content: bytes) -> bytes | None:
    """The spec's "extracting a character encoding from a meta element"."""
    position = 0
    while True:
        position = content.find(b"charset", position)
        if position < 0:
            return None
        position += len(b"charset")
        rest = content[position:].lstrip(_ASCII_WHITESPACE)
        if not rest.startswith(b"="):
            continue
        rest = rest[1:].lstrip(_ASCII_WHITESPACE)
        if rest[:1] in (b'"', b"'"):
            end = rest.find(rest[:1], 1)
            return rest[1:end] if end > 0 else None
        match = re.match(rb"[^\t\n\f\r ;]+", rest)
        return match.group(0) if match else None


def _byte_at(head: bytes, position: int) -> int:
    if position >= len(head):
        raise _CutShort
    return head[position]


def _find(head: bytes, what: bytes, start: int) -> int:
    found = head.find(what, start)
    if found < 0:
        raise _CutShort
    return found


def _is_ascii_letter(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _lower(byte: int) -> int:
    return byte + 0x20 if 0x41 <= byte <= 0x5A else byte


@cache
def _end_tag(name: bytes) -> "re.Pattern[bytes]":
    return re.compile(rb"</" + re.escape(name) + rb"[\t\n\f\r />]", re.IGNORECASE)


class MalformedBytes(Exception):
    """Bytes invalid in the encoding, where a strict decoder stops (XML). `decoded` is the
    text before them."""

    def __init__(self, decoded: str) -> None:
        super().__init__("bytes invalid in the document's encoding")
        self.decoded = decoded


# Python's euc_jp follows JIS X 0208's own table; the standard's EUC-JP decoder uses the same
# index as Shift_JIS, which maps these six characters to their Microsoft forms.
_EUC_JP_FIXES = str.maketrans(
    "\u301c\u2016\u2212\xa2\xa3\xac", "\uff5e\u2225\uff0d\uffe0\uffe1\uffe2"
)


def make_decoder(name: str, *, fatal: bool = False) -> Decoder:
    """A decoder for an Encoding Standard encoding, fed bytes as they arrive. Invalid bytes
    become U+FFFD, as in an HTML page; with `fatal` they raise MalformedBytes, as in XML."""
    if name == "replacement":
        return _ReplacementDecoder().decode
    codec = _MULTI_BYTE_CODECS.get(name)
    if codec is None:
        table = _single_byte_table(name)

        def decode_single_bytes(data: bytes, final: bool = False) -> str:
            return codecs.charmap_decode(data, "strict", table)[0]

        return decode_single_bytes
    incremental = codecs.getincrementaldecoder(codec)(errors="strict" if fatal else "replace")

    def decode(data: bytes, final: bool = False) -> str:
        try:
            text = incremental.decode(data, final)
        except UnicodeDecodeError as error:
            raise MalformedBytes(error.object[: error.start].decode(codec, "ignore")) from None
        return text.translate(_EUC_JP_FIXES) if name == "euc-jp" else text

    return decode


class _ReplacementDecoder:
    """The standard's "replacement" encoding (ISO-2022-KR, HZ, ...): one U+FFFD for it all."""

    def __init__(self) -> None:
        self.started = False

    def decode(self, data: bytes, final: bool = False) -> str:
        if data and not self.started:
            self.started = True
            return "\ufffd"
        return ""


@cache
def _single_byte_table(name: str) -> str:
    """256 characters, one per byte. The standard's tables map bytes 0x80-0x9F that the
    Windows code pages leave undefined to the C1 controls of the same number."""
    if name == "x-user-defined":
        return "".join(chr(byte if byte < 0x80 else 0xF780 + byte - 0x80) for byte in range(256))
    codec = _SINGLE_BYTE_CODECS[name]
    characters = []
    for byte in range(256):
        try:
            characters.append(bytes([byte]).decode(codec))
        except UnicodeDecodeError:
            characters.append(chr(byte) if 0x80 <= byte <= 0x9F else "\ufffd")
    return "".join(characters)


def detect_encoding(head: bytes) -> str:
    """The encoding of a page that declares none, guessed from its bytes. UTF-8 is never the
    guess: Chromium does not detect it on the web, so undeclared UTF-8 is read as the default
    windows-1252, as it shows it."""
    detector = chardetng_py.EncodingDetector()
    detector.feed(head, last=True)
    return lookup_label(str(detector.guess(tld=None, allow_utf8=False))) or "windows-1252"
