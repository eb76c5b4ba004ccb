"""Which entries a user may send as domains, and the URLs tried for each."""

import pytest

from errands.titles.domains import InvalidDomain, parse_domain


@pytest.mark.parametrize(
    ("entry", "urls"),
    [
        ("example.com", ("https://example.com/", "http://example.com/")),
        ("  Example.COM.  ", ("https://example.com/", "http://example.com/")),
        (
            "example.com:8080/docs?x=1",
            ("https://example.com:8080/docs?x=1", "http://example.com:8080/docs?x=1"),
        ),
        ("https://example.com/a?b=1#frag", ("https://example.com/a?b=1",)),
        ("HTTP://Example.com", ("http://example.com/",)),
        ("bücher.de", ("https://xn--bcher-kva.de/", "http://xn--bcher-kva.de/")),
        ("http://пример.рф/", ("http://xn--e1afmkfd.xn--p1ai/",)),
        ("127.0.0.1:8000", ("https://127.0.0.1:8000/", "http://127.0.0.1:8000/")),
        ("http://[::1]:8080/", ("http://[::1]:8080/",)),
        ("xn--ls8h.la", ("https://xn--ls8h.la/", "http://xn--ls8h.la/")),
        (
            "_dmarc-like_host.example",
            ("https://_dmarc-like_host.example/", "http://_dmarc-like_host.example/"),
        ),
    ],
)
def test_accepted_entries(entry: str, urls: tuple[str, ...]) -> None:
    assert parse_domain(entry).urls == urls


def test_the_same_site_written_two_ways_is_one_target() -> None:
    assert parse_domain("Bücher.DE") == parse_domain("xn--bcher-kva.de.")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("ftp://example.com", "scheme 'ftp'"),
        ("javascript://alert(1)", "scheme 'javascript'"),
        ("exa mple.com", "whitespace"),
        ("a" * 64 + ".com", "label longer than 63"),
        ("a." * 127 + "com", "longer than 253"),
        ("x" * 3000, "longer than 2048"),
        ("user:secret@example.com", "user name or password"),
        ("example.com:99999", "not a valid URL"),
        ("http://", "no host name"),
        ("-bad-.com", "bad label"),
        ("a..b", "bad label"),
        ("exa<mple>.com", "bad label"),
    ],
)
def test_rejected_entries_say_why(entry: str, reason: str) -> None:
    with pytest.raises(InvalidDomain, match=reason):
        parse_domain(entry)


@pytest.mark.parametrize("entry", ["ex\u200dample.ü", "xn--zz.com", "http://www.xn--a.org/"])
def test_invalid_idn_is_rejected(entry: str) -> None:
    with pytest.raises(InvalidDomain, match="internationalised"):
        parse_domain(entry)
