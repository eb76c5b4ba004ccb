"""Turning one uploaded file into PNGs no larger than a square of `max_side` (each with a small
preview), and the child-process entry point that does it under a memory limit:
`python -m errands.conversions.convert`.

The child reads one JSON job on stdin and writes JSON lines on stdout: `{"page": n}` as it starts
each page (so its supervisor can hold every page to a time budget), then one result. A file
Errands refuses (too large, encrypted, corrupt, over the upload's output quota) is a result with
an `error`; a crash is the child's exit.
"""

import ctypes
import json
import math
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "MAGIC_BYTES_NEEDED",
    "ConversionError",
    "FileKind",
    "Job",
    "Limits",
    "OutputQuota",
    "Page",
    "convert_file",
    "detect_kind",
    "fit_within",
    "pdf_scale",
]

FileKind = Literal["pdf", "png", "jpeg"]

# The longest signature below, so a reader knows how many bytes to look at.
MAGIC_BYTES_NEEDED = 8

SIGNATURES: tuple[tuple[bytes, FileKind], ...] = (
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)

POINTS_PER_INCH = 72
MAX_VIPS_SIDE = 10_000_000
# A page larger than this (in either direction) is a malformed or hostile file, not a document.
MAX_PAGE_SIDE_IN = 200

# Exit status of a child that ran out of memory under its limit (crashes have their own signals).
EXIT_OUT_OF_MEMORY = 3

# prctl(2) option: the signal this process receives when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


class ConversionError(Exception):
    """The file cannot be converted; the message is shown to the user as the file's error."""


@dataclass(frozen=True)
class Limits:
    max_side: int
    pdf_dpi: int
    max_pixels: int
    max_pdf_pages: int
    preview_width: int = 256


@dataclass(frozen=True)
class OutputQuota:
    """What the file's upload may still produce: PNG pages, their pixels and their bytes."""

    pages: int
    pixels: int
    bytes: int

    def exceeded_by(self, pages: int, pixels: int, size_bytes: int) -> str | None:
        """The error for `pages`, `pixels` and `size_bytes` if they exceed the quota, else None."""
        for part, used, allowed in (
            ("pages", pages, self.pages),
            ("pixels", pixels, self.pixels),
            ("bytes", size_bytes, self.bytes),
        ):
            if used > allowed:
                setting = f"ERRANDS_UPLOAD_MAX_OUTPUT_{part.upper()}"
                return f"output quota of the upload exceeded: more {part} than {setting} allows"
        return None


UNLIMITED = OutputQuota(pages=2**62, pixels=2**62, bytes=2**62)


@dataclass(frozen=True)
class Page:
    """One PNG written for a file: its page number (from 1), file name, size and preview."""

    page: int
    filename: str
    width: int
    height: int
    size_bytes: int
    preview_filename: str


@dataclass(frozen=True)
class Job:
    source: str
    kind: FileKind
    out_dir: str
    limits: Limits
    memory_limit_bytes: int
    quota: OutputQuota = UNLIMITED


def detect_kind(head: bytes) -> FileKind | None:
    """The file's type from its first bytes, whatever its name or declared content type says."""
    for signature, kind in SIGNATURES:
        if head.startswith(signature):
            return kind
    return None


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of `width`x`height` scaled down to fit a `max_side` square; never scaled up."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def pdf_scale(width_pt: float, height_pt: float, dpi: int, max_side: int) -> float:
    """Render scale for a page: `dpi`, lowered so that neither rendered side exceeds `max_side`.

    The renderer rounds each side up, so the scale is nudged down until float error adds no
    pixel to the exact size (US letter at 150 dpi is 1275x1650, not 1275x1651).
    """
    exact = min(Fraction(dpi, POINTS_PER_INCH), max_side / Fraction(max(width_pt, height_pt)))
    pixels = [(side, math.ceil(Fraction(side) * exact)) for side in (width_pt, height_pt)]
    scale = float(exact)
    while any(math.ceil(side * scale) > size for side, size in pixels):
        scale = math.nextafter(scale, 0.0)
    return scale


class _Output:
    """The pages written so far, held to the upload's output quota page by page."""

    def __init__(
        self, out_dir: Path, limits: Limits, quota: OutputQuota, on_page: Callable[[int], None]
    ) -> None:
        self.out_dir = out_dir
        self.limits = limits
        self.quota = quota
        self.start = on_page
        self.pages: list[Page] = []
        self.pixels = 0
        self.bytes = 0

    def check_room(self, number: int, pages: int, width: int, height: int) -> None:
        """Refuse before rendering what could not fit: `pages` in all, the next `width`x`height`."""
        exceeded = self.quota.exceeded_by(pages, self.pixels + width * height, self.bytes)
        if exceeded:
            raise _over_quota(number, exceeded)

    def save(self, number: int, image: Any) -> None:
        """Write page `number` as PNG with its preview, then count its bytes against the quota."""
        import pyvips

        filename, preview_filename = _page_filename(number), _preview_filename(number)
        path = self.out_dir / filename
        # Metadata is dropped: an embedded CMYK or 16-bit profile would no longer describe it.
        image.pngsave(str(path), keep="none")
        size_bytes = path.stat().st_size
        self.pixels += image.width * image.height
        self.bytes += size_bytes
        exceeded = self.quota.exceeded_by(len(self.pages) + 1, self.pixels, self.bytes)
        if exceeded:
            raise _over_quota(number, exceeded)
        # As wide as asked, whatever the height (the height given is only a bound).
        preview = pyvips.Image.thumbnail(
            str(path), self.limits.preview_width, height=MAX_VIPS_SIDE, size="down"
        )
        preview.pngsave(str(self.out_dir / preview_filename), keep="none")
        self.pages.append(
            Page(number, filename, image.width, image.height, size_bytes, preview_filename)
        )


def _over_quota(number: int, exceeded: str) -> ConversionError:
    return ConversionError(f"{exceeded} (at page {number})")


def convert_file(
    source: Path,
    kind: FileKind,
    out_dir: Path,
    limits: Limits,
    quota: OutputQuota = UNLIMITED,
    on_page: Callable[[int], None] = lambda number: None,
) -> list[Page]:
    """Write the PNGs for `source` into `out_dir` as page-0001.png, page-0002.png, ... (and
    page-0001.preview.png, ...), within what the upload's `quota` leaves; `on_page(n)` is called
    as page n starts."""
    output = _Output(out_dir, limits, quota, on_page)
    if kind == "pdf":
        _convert_pdf(source, output)
    else:
        output.start(1)
        _convert_image(source, output)
    return output.pages


def _page_filename(number: int) -> str:
    return f"page-{number:04d}.png"


def _preview_filename(number: int) -> str:
    return f"page-{number:04d}.preview.png"


def _convert_image(source: Path, output: _Output) -> None:
    import pyvips

    limits = output.limits
    try:
        # Opening reads the header only; pixels are decoded later, after the size check.
        header = pyvips.Image.new_from_file(str(source), access="sequential")
        if header.width * header.height > limits.max_pixels:
            raise ConversionError(f"image too large: {header.width}x{header.height}")
        # Shrink-on-load where the format allows it; rotated upright by its EXIF orientation.
        # Any decoder warning fails the file: a truncated image would otherwise come out grey.
        image = pyvips.Image.thumbnail(
            str(source),
            limits.max_side,
            height=limits.max_side,
            size="down",
            fail_on="warning",
        )
        output.check_room(1, 1, image.width, image.height)
        output.save(1, _to_8bit_srgb(image))
    except pyvips.Error as error:
        raise _vips_failure(error, "not a readable image") from None


def _to_8bit_srgb(image: Any) -> Any:
    """8-bit sRGB (or 8-bit grey for grey input), alpha kept."""
    colour_bands = image.bands - (1 if image.hasalpha() else 0)
    target = "b-w" if colour_bands == 1 else "srgb"
    if image.interpretation != target or image.format != "uchar":
        image = image.colourspace(target)
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _convert_pdf(source: Path, output: _Output) -> None:
    import pypdfium2 as pdfium
    import pyvips

    limits = output.limits
    try:
        document = pdfium.PdfDocument(str(source))
    except pdfium.PdfiumError as error:
        if "password" in str(error).lower():
            raise ConversionError("the PDF is encrypted (password protected)") from None
        raise ConversionError(f"not a readable PDF: {error}") from None
    try:
        count = len(document)
        if count == 0:
            raise ConversionError("the PDF has no pages")
        if count > limits.max_pdf_pages:
            raise ConversionError(f"too many pages: {count} (at most {limits.max_pdf_pages})")
        for index in range(count):
            number = index + 1
            output.start(number)
            page = document[index]
            try:
                width_pt, height_pt = page.get_size()
                _check_page_size(number, width_pt, height_pt)
                scale = pdf_scale(width_pt, height_pt, limits.pdf_dpi, limits.max_side)
                width, height = (math.ceil(side * scale) for side in (width_pt, height_pt))
                output.check_room(number, count, width, height)
                # 4 bytes per pixel keeps rows unpadded, so the buffer maps straight onto vips.
                bitmap = page.render(scale=scale, rev_byteorder=True, prefer_bgrx=True)
                try:
                    rgbx = pyvips.Image.new_from_memory(
                        bitmap.buffer, bitmap.width, bitmap.height, 4, "uchar"
                    )
                    output.save(number, rgbx.extract_band(0, n=3))
                finally:
                    bitmap.close()
            except pdfium.PdfiumError as error:
                raise ConversionError(f"page {number} cannot be rendered: {error}") from None
            except pyvips.Error as error:
                raise _vips_failure(error, f"page {number} cannot be saved") from None
            finally:
                page.close()
    finally:
        document.close()


def _check_page_size(number: int, width_pt: float, height_pt: float) -> None:
    width_in, height_in = width_pt / POINTS_PER_INCH, height_pt / POINTS_PER_INCH
    usable = 0 < width_in <= MAX_PAGE_SIDE_IN and 0 < height_in <= MAX_PAGE_SIDE_IN
    if not (usable and math.isfinite(width_in) and math.isfinite(height_in)):
        raise ConversionError(
            f"page {number} has an unusable size: {width_in:.4g}x{height_in:.4g} inches"
        )


# How libvips reports running out of its memory limit, as opposed to a bad file.
OUT_OF_MEMORY_SIGNS = ("out of memory", "failed to allocate", "Error creating thread")


def _vips_failure(error: Any, what: str) -> Exception:
    """The exception for a libvips error: MemoryError under the limit, else the file's error."""
    detail = error.detail or error.message
    if any(sign in detail for sign in OUT_OF_MEMORY_SIGNS):
        return MemoryError(detail)
    return ConversionError(f"{what}: {_first_line(detail)}")


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _announce_page(number: int) -> None:
    """Tell the supervisor that page `number` starts now (its time budget starts with it)."""
    sys.stdout.write(json.dumps({"page": number}) + "\n")
    sys.stdout.flush()


def job_from_json(text: str) -> Job:
    raw = json.loads(text)
    return Job(
        source=raw["source"],
        kind=raw["kind"],
        out_dir=raw["out_dir"],
        limits=Limits(**raw["limits"]),
        memory_limit_bytes=raw["memory_limit_bytes"],
        quota=OutputQuota(**raw["quota"]),
    )


def job_to_json(job: Job) -> str:
    return json.dumps(asdict(job))


def _end_with_parent() -> None:
    """Have Linux kill this child when its supervisor dies, so no conversion outlives it (the
    file's lease then runs out and another worker converts it again)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was made
        raise SystemExit("the supervisor is gone")


def main() -> None:
    """Child entry point: limit memory, convert one file, report pages or error and peak RSS."""
    _end_with_parent()
    job = job_from_json(sys.stdin.read())
    # The limit comes first, so the libraries loaded below cannot grow past it either.
    resource.setrlimit(resource.RLIMIT_AS, (job.memory_limit_bytes, job.memory_limit_bytes))
    result: dict[str, Any]
    try:
        pages = convert_file(
            Path(job.source), job.kind, Path(job.out_dir), job.limits, job.quota, _announce_page
        )
        result = {"pages": [asdict(page) for page in pages]}
    except ConversionError as error:
        result = {"error": str(error)}
    except MemoryError:
        sys.exit(EXIT_OUT_OF_MEMORY)
    result["peak_rss_bytes"] = _peak_rss_bytes()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
