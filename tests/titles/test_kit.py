"""Errands' titles against Chromium's document.title over pages nobody here wrote (kit/)."""

import json
from pathlib import Path

from errands.titles.extract import TitleReader

KIT = Path(__file__).parent / "kit"
TARGET_AGREEMENT = 0.99
# Bodies are fed in reads of this size, as the network delivers them.
READ_BYTES = 1000


def errands_title(page: bytes, content_type: str) -> str:
    reader = TitleReader(content_type)
    for start in range(0, len(page), READ_BYTES):
        if reader.feed(page[start : start + READ_BYTES]):
            break
    return reader.result() or ""


def test_errands_reads_the_title_chromium_shows() -> None:
    entries = json.loads((KIT / "kit.json").read_text())
    differences = []
    for entry in entries:
        page = (KIT / "pages" / entry["page"]).read_bytes()
        ours = errands_title(page, entry["content_type"])
        if ours != entry["chromium"]:
            differences.append((entry["page"], entry["content_type"], entry["chromium"], ours))
    for page, content_type, chromium, ours in differences:
        print(f"{page} ({content_type}):\n  chromium {chromium!r}\n  errands  {ours!r}")
    agreement = 1 - len(differences) / len(entries)
    print(f"{len(entries) - len(differences)} of {len(entries)} agree ({agreement:.2%})")
    assert agreement >= TARGET_AGREEMENT
