"""What a user may send as a domain, and the URLs Errands tries for it."""

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

__all__ = ["MAX_ENTRY_CHARS", "InvalidDomain", "Target", "parse_domain"]

MAX_ENTRY_CHARS = 2048
MAX_HOST_CHARS = 253
MAX_LABEL_CHARS = 63

# Letters, digits, hyphens; underscores too, since real hosts use them though RFC 952 does not.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")


class InvalidDomain(ValueError):
    """The entry is not a host name or an http(s) URL; the message says why."""


@dataclass(frozen=True)
class Target:
    """One page to fetch: the URLs to try in order (https, then http for a bare domain)."""

    urls: tuple[str, ...]


def parse_domain(entry: str) -> Target:
    """A bare domain (`example.com`, `bücher.de:8443/path`) or an http(s) URL, normalised."""
    text = entry.strip()
    if not text:
        raise InvalidDomain("is empty")
    if len(text) > MAX_ENTRY_CHARS:
        raise InvalidDomain(f"is longer than {MAX_ENTRY_CHARS} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in text):
        raise InvalidDomain("contains whitespace or control characters")
    scheme, separator, rest = text.partition("://")
    if separator:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidDomain(f"has scheme {scheme!r}; only http and https are fetched")
        schemes: tuple[str, ...] = (scheme,)
    else:
        schemes, rest = ("https", "http"), text
    try:
        parts = urlsplit("//" + rest)
        port = parts.port
    except ValueError as error:
        raise InvalidDomain(f"is not a valid URL ({error})") from None
    if parts.username is not None or parts.password is not None:
        raise InvalidDomain("must not contain a user name or password")
    if not parts.hostname:
        raise InvalidDomain("has no host name")
    host = _ascii_host(parts.hostname)
    authority = f"{host}:{port}" if port is not None else host
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return Target(urls=tuple(f"{scheme}://{authority}{path}{query}" for scheme in schemes))


def _ascii_host(host: str) -> str:
    """The host as sent on the wire: IP literals bracketed, names in punycode and lower case."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    name = host.removesuffix(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise InvalidDomain(f"is not a valid internationalised domain name ({error})") from None
    name = name.lower()
    if len(name) > MAX_HOST_CHARS:
        raise InvalidDomain(f"has a host name longer than {MAX_HOST_CHARS} characters")
    for label in name.split("."):
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidDomain(
                f"has a label longer than {MAX_LABEL_CHARS} characters ({label[:20]}...)"
            )
        if not _LABEL.match(label):
            raise InvalidDomain(f"is not a host name or URL (bad label {label!r})")
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise InvalidDomain(
                    f"is not a valid internationalised domain name (bad punycode {label!r})"
                ) from None
    return name
