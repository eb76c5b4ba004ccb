"""The encoding sniffing steps on their own: labels, header, XML declaration, the prescan."""

import pytest

from errands.titles.encoding import (
    detect_encoding,
    encoding_from_content_type,
    encoding_from_xml_declaration,
    lookup_label,
    make_decoder,
    prescan,
)


@pytest.mark.parametrize(
    ("label", "name"),
    [
        (" LATIN1 ", "windows-1252"),
        ("x-sjis", "shift_jis"),
        ("gb2312", "gbk"),
        ("iso-2022-kr", "replacement"),
        ("cp932", None),
        ("utf-32", None),
        ("utf8\x00", None),
    ],
)
def test_labels_come_from_the_encoding_standard(label: str, name: str | None) -> None:
    assert lookup_label(label) == name


@pytest.mark.parametrize(
    ("content_type", "name"),
    [
        ('text/html; charset="Shift_JIS"', "shift_jis"),
        ("text/html;charset=koi8-r;format=x", "koi8-r"),
        ("text/html; charset=nonsense", None),
        ("text/html", None),
        (None, None),
    ],
)
def test_charset_of_the_content_type(content_type: str | None, name: str | None) -> None:
    assert encoding_from_content_type(content_type) == name


def test_xml_declaration() -> None:
    assert encoding_from_xml_declaration(b"<?xml version='1.0' encoding='EUC-JP'?>") == "euc-jp"
    assert encoding_from_xml_declaration(b'<?xml version="1.0" encoding="UTF-16"?>') == "utf-8"
    assert encoding_from_xml_declaration(b'<?xml version="1.0"?><p>') is None
    assert encoding_from_xml_declaration(b'<?xml version="1.0" enc') is False
    assert encoding_from_xml_declaration(b" <?xml encoding='koi8-r'?>") is None  # not first
    assert encoding_from_xml_declaration("<?xml".encode("utf-16-le")) == "utf-16le"


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"<meta charset=koi8-r charset=big5>", "koi8-r"),  # the first of a name counts
        (b'<meta content="a>b" charset=koi8-r>', "koi8-r"),  # ">" inside a quoted value
        (b"<meta charset=bogus><meta charset=koi8-r>", "koi8-r"),  # unknown: scan on
        (b'<meta content="text/html; charset=koi8-r">', None),  # no http-equiv
        (b"<meta http-equiv=Content-Type content=\"text/html;charset='koi8-r'\">", "koi8-r"),
        (b'<meta charset="utf-16be">', "utf-8"),
        (b'<meta charset="x-user-defined">', "windows-1252"),
        (b"<!--><meta charset=koi8-r>", "koi8-r"),  # "<!-->" is a whole comment
        (b"<!-- <meta charset=big5> --><meta charset=koi8-r>", "koi8-r"),
        (b'<p title="<meta charset=big5>"><meta charset=koi8-r>', "koi8-r"),
        (b"<script>'<meta charset=big5>'</script><meta charset=koi8-r>", "koi8-r"),
        (b"<metal charset=big5><meta/charset=koi8-r>", "koi8-r"),
        (b"<p>no declaration</p>", None),
    ],
)
def test_prescan(head: bytes, name: str | None) -> None:
    assert prescan(head, final=True) == name


def test_prescan_asks_for_more_bytes_until_it_can_decide() -> None:
    assert prescan(b'<meta charset="koi', final=False) is False
    assert prescan(b'<meta charset="koi', final=True) is None
    assert prescan(b"<p>" + b" " * 1100 + b"<p>", final=False) is None  # past 1024, not head


def test_windows_1252_and_the_replacement_encoding() -> None:
    assert make_decoder("windows-1252")(b"\x80\x81\x9d\x9f", True) == "\u20ac\x81\x9d\u0178"
    decode = make_decoder("replacement")
    assert decode(b"abc", False) + decode(b"def", True) == "\ufffd"


def test_detection_never_answers_utf8() -> None:
    assert detect_encoding("Привет, как дела сегодня, друзья".encode("cp1251")) == "windows-1251"
    assert detect_encoding("Привет, как дела сегодня, друзья".encode()) == "windows-1252"
