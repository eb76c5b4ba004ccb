"""Gather the ground-truth pages from their published sources into tests/titles/kit/pages/.

    python tests/titles/kit/gather.py

Sources (see README.md beside this file): html5lib 1.1's sdist (the html5lib-tests
tree-construction and encoding data), chardet 5.2.0's sdist (its test pages and feeds in many
encodings), and HTML documentation from Debian packages. sdists come through pip and packages
through `apt-get download`. Writes pages/ and kit.json (each page with the Content-Type it is
served with); record.py then adds what Chromium shows as document.title.
"""

import gzip
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KIT = Path(__file__).parent
PAGES = KIT / "pages"
# Longer files are cut here, to keep the kit small; Chromium is recorded on the cut bytes.
MAX_PAGE_BYTES = 8 * 1024
SDISTS = ["html5lib==1.1", "chardet==5.2.0"]
DEBIAN_PACKAGES = [
    "debian-faq-de",
    "debian-faq-ja",
    "debian-faq-ko",
    "debian-faq-ru",
    "debian-faq-zh-cn",
    "debian-history",
    "debian-reference-ja",
    "debian-reference-zh-tw",
    "developers-reference-ru",
    "harden-doc",
    "installation-guide-amd64",
    "maint-guide-ja",
    "maint-guide-ru",
    "maint-guide-vi",
    "maint-guide-zh-tw",
]
PAGES_PER_PACKAGE = 20
# Tree-construction tests that are not whole documents, or need a script run mid-parse.
_SKIPPED_SECTIONS = ("#document-fragment", "#script-off")


def main() -> None:
    if PAGES.exists():
        shutil.rmtree(PAGES)
    entries: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        sources = download_sdists(work)
        entries += tree_construction_pages(sources["html5lib"])
        entries += encoding_test_pages(sources["html5lib"])
        entries += chardet_pages(sources["chardet"])
        entries += debian_pages(work)
    (KIT / "kit.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(entries)} pages")


def download_sdists(work: Path) -> dict[str, Path]:
    """Each sdist unpacked; pip needs old setuptools to prepare these two, so a venv has it."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--quiet"]
    subprocess.run([*pip, "install", "setuptools<70", "wheel"], check=True)
    downloads = work / "sdists"
    for requirement in SDISTS:
        subprocess.run(
            [
                *pip,
                "download",
                "--no-deps",
                "--no-build-isolation",
                "--no-binary",
                ":all:",
                "--dest",
                str(downloads),
                requirement,
            ],
            check=True,
        )
    unpacked: dict[str, Path] = {}
    for archive in downloads.glob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            tar.extractall(work / "src", filter="data")
        name = archive.name.split("-")[0]
        unpacked[name] = work / "src" / archive.name.removesuffix(".tar.gz")
    return unpacked


def save(relative: str, body: bytes, content_type: str, source: str) -> dict[str, str]:
    path = PAGES / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body[:MAX_PAGE_BYTES])
    return {"page": relative, "content_type": content_type, "source": source}


def dat_sections(text: bytes) -> list[dict[bytes, bytes]]:
    """The tests of an html5lib .dat file: each a dict of '#section' -> its lines."""
    tests: list[dict[bytes, bytes]] = []
    current: dict[bytes, bytes] = {}
    section = b""
    for line in text.split(b"\n"):
        if line.startswith(b"#") and re.fullmatch(rb"#[a-z-]+(?: .*)?", line):
            if line == b"#data" and current:
                tests.append(current)
                current = {}
            section = line.split(b" ")[0]
            current[section] = b""
            continue
        current[section] = current.get(section, b"") + line + b"\n"
    if current:
        tests.append(current)
    return tests


def tree_construction_pages(html5lib: Path) -> list[dict[str, str]]:
    entries = []
    folder = html5lib / "html5lib" / "tests" / "testdata" / "tree-construction"
    for dat in sorted(folder.glob("*.dat")):
        for number, test in enumerate(dat_sections(dat.read_bytes())):
            if any(section.encode() in test for section in _SKIPPED_SECTIONS):
                continue
            # A test's data ends with the newline before "#errors", which is not part of it.
            data = test[b"#data"].removesuffix(b"\n")
            relative = f"html5lib-tree/{dat.stem}-{number:03d}.html"
            source = f"html5lib-tests tree-construction/{dat.name} test {number}"
            entries.append(save(relative, data, "text/html; charset=utf-8", source))
    return entries


def encoding_test_pages(html5lib: Path) -> list[dict[str, str]]:
    """The prescan tests, served without a charset so the page's own declaration counts."""
    entries = []
    folder = html5lib / "html5lib" / "tests" / "testdata" / "encoding"
    for dat in sorted(folder.glob("*.dat")):
        for number, test in enumerate(dat_sections(dat.read_bytes())):
            data = test[b"#data"].removesuffix(b"\n")
            relative = f"html5lib-encoding/{dat.stem}-{number:03d}.html"
            source = f"html5lib-tests encoding/{dat.name} test {number}"
            entries.append(save(relative, data, "text/html", source))
    return entries


def chardet_pages(chardet: Path) -> list[dict[str, str]]:
    """Every test file served as text/html without a charset, so the page's own declaration
    or its bytes decide; the XML feeds also as text/xml, which has no document.title."""
    entries = []
    for path in sorted((chardet / "tests").rglob("*")):
        if not path.is_file() or path.suffix not in (".html", ".xml", ".txt"):
            continue
        relative = "chardet/" + path.relative_to(chardet / "tests").as_posix()
        source = f"chardet 5.2.0 tests/{path.relative_to(chardet / 'tests').as_posix()}"
        body = path.read_bytes()
        entries.append(save(relative, body, "text/html", source))
        if path.suffix == ".xml":
            entries.append({"page": relative, "content_type": "text/xml", "source": source})
    return entries


def debian_pages(work: Path) -> list[dict[str, str]]:
    downloads = work / "debs"
    downloads.mkdir()
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=downloads, check=True)
    entries = []
    for deb in sorted(downloads.glob("*.deb")):
        package = deb.name.split("_")[0]
        root = work / "debian" / package
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        files = sorted(
            path for path in root.rglob("*") if path.name.endswith((".html", ".html.gz"))
        )
        step = max(1, len(files) // PAGES_PER_PACKAGE)
        for path in files[::step][:PAGES_PER_PACKAGE]:
            body = path.read_bytes()
            if path.suffix == ".gz":
                body = gzip.decompress(body)
            inside = path.relative_to(root).as_posix().removesuffix(".gz")
            relative = f"debian/{package}/{inside.removeprefix('usr/share/doc/')}"
            entries.append(save(relative, body, "text/html", f"Debian {deb.name}: /{inside}"))
    return entries


if __name__ == "__main__":
    main()
