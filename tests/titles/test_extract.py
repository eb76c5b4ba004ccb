"""Title extraction matches what a browser shows as `document.title`, whatever the bytes."""

import codecs
import time

import pytest

from errands.titles.extract import TitleReader


def read_title(body: bytes, content_type: str | None = "text/html", chunk: int = 0) -> str | None:
    """Feed `body` whole or in `chunk`-byte pieces, as a network read would."""
    reader = TitleReader(content_type)
    step = chunk or len(body) or 1
    for start in range(0, len(body), step):
        if reader.feed(body[start : start + step]):
            break
    return reader.result()


@pytest.mark.parametrize(
    ("page", "title"),
    [
        (b"<html><head><title>Example Domain</title></head></html>", "Example Domain"),
        (b"<title>\n   Spaced \t\r\n  out   </title>", "Spaced out"),
        (
            b"<title>Tom &amp; Jerry &lt;3 &#x263A; &eacute;t&eacute;</title>",
            "Tom & Jerry <3 \u263a été",
        ),
        (b"<title>no semicolon &amp done &copy 2024</title>", "no semicolon & done \xa9 2024"),
        (b"<title>keeps&nbsp;nbsp</title>", "keeps\xa0nbsp"),
        (b"<TITLE>Upper case</TiTlE>", "Upper case"),
        (b"<title>markup <b>is</b> text</title>", "markup <b>is</b> text"),
        (b"<svg><title>icon</title></svg><title>Page</title>", "Page"),
        (b"<svg viewBox='0 0 1 1'><g><title>a</title></g></svg><p><title>Late</title>", "Late"),
        (b"<math><title>m</title></math><title>After math</title>", "After math"),
        (b"<svg/><title>After empty svg</title>", "After empty svg"),
        (b"<script>d.title='<title>no</title>'</script><title>Yes</title>", "Yes"),
        (b"<style>/*<title>no</title>*/</style><title>Styled</title>", "Styled"),
        (b"<textarea><title>no</title></textarea><title>Form</title>", "Form"),
        (b"<!-- <title>commented</title> --><title>Real</title>", "Real"),
        (b"<title>First</title><title>Second</title>", "First"),
        (b"<title>Unclosed to the end", "Unclosed to the end"),
        (b"<body><h1>No title here</h1></body>", None),
        (b'<meta content="<title>in an attribute</title>"><title>Out</title>', "Out"),
        (b"<a href='x>y' title=\"<title>\">link</a><title>After quotes</title>", "After quotes"),
        (b"<img alt=a>b src=x><title>Unquoted</title>", "Unquoted"),
        (b'<a "odd" x= ><title>Odd attributes</title>', "Odd attributes"),
        (b"<div =x><title>Name starts with =</title>", "Name starts with ="),
        (b'<a x="never closed <title>inside the value</title>', None),
        (b"<template><title>in a template</title></template><title>Doc</title>", "Doc"),
        (
            b"<svg><foreignObject><title>HTML inside SVG</title></foreignObject></svg>",
            "HTML inside SVG",
        ),
        (b"<svg><p><title>Broke out of SVG</title>", "Broke out of SVG"),
        (b"<math><mi><title>In a text point</title></mi></math>", "In a text point"),
        (b"<plaintext><title>not a tag</title>", None),
        (b"<frameset><title>ignored in a frameset</title></frameset>", None),
        (b"<script><!--<script></script><title>escaped</title>--></script><title>T</title>", "T"),
        (b"<title>a\x00b</title>", "a\ufffdb"),
        (b"<?xml version='1.0'?><!DOCTYPE html><title>Declared</title>", "Declared"),
        (b"<!-- a --!><title>Bang comment end</title>", "Bang comment end"),
        (b"<!--><title>Empty comment</title>", "Empty comment"),
        (b"<noscript><title>no</title></noscript><title>Scripted</title>", "Scripted"),
        (b"<title/>Self closed</title>", "Self closed"),
        (b"<title>a </titles> b</title >", "a </titles> b"),
        (b"1 < 2 <3 </ 4> <title>Stray brackets</title>", "Stray brackets"),
        (b"<title>   </title>", None),
        (b"", None),
    ],
)
@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_title_as_a_browser_reads_it(page: bytes, title: str | None, chunk: int) -> None:
    assert read_title(page, chunk=chunk) == title


def test_reading_stops_as_soon_as_the_title_closes() -> None:
    reader = TitleReader("text/html; charset=utf-8")
    assert not reader.feed(b"<html><head><title>Quick")
    assert reader.feed(b"</title></head>")
    assert reader.result() == "Quick"


@pytest.mark.parametrize(
    ("text", "codec", "content_type"),
    [
        ("Привет, мир", "cp1251", "text/html; charset=windows-1251"),
        ("日本語のページ", "shift_jis", "text/html; charset=Shift_JIS"),
        ("Ça coûte €5", "cp1252", "text/html; charset=ISO-8859-1"),
        ("Ελληνικά", "iso8859-7", 'text/html; charset="iso-8859-7"'),
        ("中文标题", "gb18030", "text/html;charset=gb2312"),
    ],
)
def test_charset_from_the_http_header(text: str, codec: str, content_type: str) -> None:
    page = b"<html><head><title>" + text.encode(codec) + b"</title>"
    assert read_title(page, content_type) == text
    assert read_title(page, content_type, chunk=3) == text


@pytest.mark.parametrize(
    ("text", "codec", "meta"),
    [
        ("Привет", "cp1251", b'<meta charset="windows-1251">'),
        ("日本語", "shift_jis", b"<meta charset=shift_jis>"),
        ("café", "latin-1", b"<META CHARSET='latin1' />"),
        (
            "Привет",
            "koi8-r",
            b'<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">',
        ),
        ("Привет", "cp1251", b"<meta content='text/html; charset=cp1251' http-equiv=content-type>"),
    ],
)
def test_charset_from_a_meta_declaration(text: str, codec: str, meta: bytes) -> None:
    page = b"<!doctype html><html><head>" + meta + b"<title>" + text.encode(codec) + b"</title>"
    assert read_title(page, "text/html") == text
    assert read_title(page, None, chunk=5) == text


def test_byte_order_mark_wins_over_header_and_meta() -> None:
    page = codecs.BOM_UTF8 + '<meta charset="windows-1251"><title>Zoë</title>'.encode()
    assert read_title(page, "text/html; charset=windows-1251") == "Zoë"
    utf16 = codecs.BOM_UTF16_LE + "<title>Wide ☺</title>".encode("utf-16-le")
    assert read_title(utf16, "text/html; charset=iso-8859-1", chunk=3) == "Wide ☺"


def test_header_wins_over_meta() -> None:
    page = '<meta charset="utf-8"><title>Привет</title>'.encode("cp1251")
    assert read_title(page, "text/html; charset=windows-1251") == "Привет"


def test_meta_in_a_comment_is_ignored() -> None:
    title = "Привет".encode("cp1251")
    commented = b'<!-- <meta charset="koi8-r"> --><meta charset="windows-1251"><title>' + title
    assert read_title(commented + b"</title>", None) == "Привет"


def test_meta_past_1024_bytes_counts_only_while_the_head_goes_on() -> None:
    title = b"<title>caf\xe9</title>"
    in_head = title + b"<script>" + b" " * 1100 + b'</script><meta charset="koi8-r">'
    assert read_title(in_head, "text/html") == "cafИ"
    after_body = title + b"<p>" + b" " * 1100 + b'</p><meta charset="koi8-r">'
    assert read_title(after_body, "text/html") == "café"


def test_xml_declaration_names_the_encoding_of_html() -> None:
    page = '<?xml version="1.0" encoding="windows-1251"?><title>Привет</title>'.encode("cp1251")
    assert read_title(page, "text/html", chunk=4) == "Привет"
    overruled = b'<?xml version="1.0" encoding="koi8-r"?><meta charset="windows-1251">'
    assert read_title(overruled + "<title>Да</title>".encode("cp1251"), "text/html") == "Да"


def test_undeclared_pages_are_detected_but_never_as_utf8() -> None:
    russian = "<title>Новости науки и техники за неделю</title>".encode("cp1251")
    assert read_title(russian, "text/html", chunk=100) == "Новости науки и техники за неделю"
    japanese = "<title>日本語のニュースサイトです</title>".encode("euc_jp")
    assert read_title(japanese, "text/html") == "日本語のニュースサイトです"
    # Chromium reads undeclared UTF-8 as the default windows-1252, and so does Errands.
    assert read_title("<title>café</title>".encode(), "text/html") == "cafÃ©"


def test_windows_1252_undefined_bytes_are_c1_controls() -> None:
    page = b"<title>a\x81b\x8dc\x8fd\x90e\x9df\x80</title>"
    assert read_title(page, "text/html; charset=windows-1252") == "a\x81b\x8dc\x8fd\x90e\x9df\u20ac"


def test_unknown_charset_label_falls_back() -> None:
    assert read_title(b"<title>plain</title>", "text/html; charset=no-such-thing") == "plain"


@pytest.mark.parametrize(
    "label", ["zlib", "base64", "rot13", "undefined", "idna", "utf-7", "utf-32", "cp037", "cp932"]
)
def test_a_label_the_encoding_standard_does_not_list_is_unknown(label: str) -> None:
    page = "<meta charset=koi8-r><title>Да</title>".encode("koi8-r")
    assert read_title(page, f"text/html; charset={label}") == "Да"


def test_labels_the_standard_maps_to_wider_encodings() -> None:
    wide = "<title>Wide</title>".encode("utf-16-le")
    assert read_title(wide, "text/html; charset=UTF-16") == "Wide"  # no BOM: little-endian
    thai = "<title>ภาษาไทย</title>".encode("cp874")
    assert read_title(thai, "text/html; charset=tis-620") == "ภาษาไทย"
    japanese = "<title>①ｱ</title>".encode("cp932")  # NEC and IBM extensions
    assert read_title(japanese, "text/html; charset=shift_jis") == "①ｱ"
    assert read_title(b"<title>\xa4</title>", "text/html; charset=latin1") == "\xa4"
    assert read_title(b"<title>\x80</title>", "text/html; charset=ascii") == "\u20ac"


def test_replacement_encoding_reads_as_one_replacement_character() -> None:
    assert read_title(b"<title>x</title>", "text/html; charset=iso-2022-kr") is None


@pytest.mark.parametrize(
    ("content_type", "page", "title"),
    [
        ("text/xml", b"<rss><channel><title>Feed</title></channel></rss>", None),
        ("application/xml", b"<?xml version='1.0'?><doc><title>No</title></doc>", None),
        (
            "application/xhtml+xml",
            b'<html xmlns="http://www.w3.org/1999/xhtml"><head><title> X  H </title>',
            "X H",
        ),
        (
            "image/svg+xml",
            b'<svg xmlns="http://www.w3.org/2000/svg"><g><title>inner</title></g>'
            b"<title>Drawing</title></svg>",
            "Drawing",
        ),
        ("text/plain", b"<title>Shown as text</title>", None),
        ("application/json", b'{"title": "no"}', None),
        ("text/xml", b"<rss><title>broken</title><&></rss>", None),
    ],
)
def test_documents_that_are_not_html(content_type: str, page: bytes, title: str | None) -> None:
    assert read_title(page, content_type) == title


def test_xml_encoding_comes_from_its_declaration() -> None:
    page = (
        '<?xml version="1.0" encoding="Shift_JIS"?>'
        '<html xmlns="http://www.w3.org/1999/xhtml"><title>日本</title></html>'
    ).encode("cp932")
    assert read_title(page, "application/xhtml+xml", chunk=5) == "日本"


@pytest.mark.parametrize(
    ("chunks", "title"),
    [
        ([b"<head><", b"title>Split</title>"], "Split"),
        ([b"<svg><title>logo</title></", b"svg><title>Real</title>"], "Real"),
        ([b"x" * 8191 + b"<title>At a slice edge</title>"], "At a slice edge"),
    ],
)
def test_markup_cut_by_a_read_is_read_whole(chunks: list[bytes], title: str) -> None:
    reader = TitleReader("text/html; charset=utf-8")
    for chunk in chunks:
        reader.feed(chunk)
    assert reader.result() == title


@pytest.mark.parametrize("unit", [b"<a", b"</a", b'<a x="'])
def test_a_page_of_tags_left_open_is_read_in_linear_time(unit: bytes) -> None:
    body = unit * (1024 * 1024 // len(unit))
    started = time.perf_counter()

    assert read_title(body, "text/html; charset=utf-8", chunk=64 * 1024) is None
    assert time.perf_counter() - started < 1.0


def test_a_title_soon_after_an_svg_icon_stops_the_reading_soon_after_it() -> None:
    # The icon's "</title" makes the reader parse at 8 KB; the real one arrives before the
    # text has grown enough to parse again, and must still be acted on.
    head = b"<p>" + b"x" * 7000 + b"<svg><title>icon</title></svg>" + b"x" * 1500
    body = head + b"<title>Real</title>" + b"<p>filler</p>" * 100_000
    reader = TitleReader("text/html; charset=utf-8")
    fed = 0
    while not reader.feed(body[fed : fed + 1000]):
        fed += 1000
        assert fed < len(body)
    assert fed < 20_000
    assert reader.result() == "Real"
