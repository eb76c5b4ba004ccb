"""The converter itself: sizes, orientation, colour, alpha, pages and refusals, in this process."""

from pathlib import Path

import pytest
import pyvips

from errands.conversions.convert import (
    ConversionError,
    FileKind,
    Limits,
    OutputQuota,
    Page,
    convert_file,
    detect_kind,
    fit_within,
    pdf_scale,
)
from tests.conversions import samples

LIMITS = Limits(max_side=3500, pdf_dpi=150, max_pixels=250_000_000, max_pdf_pages=50)
ROOMY = OutputQuota(pages=1000, pixels=10**10, bytes=10**9)


def convert(
    tmp_path: Path,
    content: bytes,
    kind: FileKind,
    limits: Limits = LIMITS,
    quota: OutputQuota = ROOMY,
) -> list[Page]:
    source = tmp_path / "source"
    source.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    return convert_file(source, kind, out, limits, quota)


def load(tmp_path: Path, page: Page) -> pyvips.Image:
    # From a buffer: libvips caches images opened by file name.
    return pyvips.Image.new_from_buffer((tmp_path / "out" / page.filename).read_bytes(), "")


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"%PDF-1.7\n", "pdf"),
        (b"\x89PNG\r\n\x1a\n\0\0", "png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "jpeg"),
        (b"GIF89a", None),
        (b"hello, world", None),
        (b"%PD", None),
        (b"", None),
    ],
)
def test_type_is_told_by_the_first_bytes(head: bytes, kind: str | None) -> None:
    assert detect_kind(head) == kind


def test_fit_within_scales_down_keeping_the_aspect_ratio_and_never_up() -> None:
    assert fit_within(8000, 6000, 3500) == (3500, 2625)
    assert fit_within(6000, 8000, 3500) == (2625, 3500)
    assert fit_within(3500, 3500, 3500) == (3500, 3500)
    assert fit_within(640, 480, 3500) == (640, 480)
    assert fit_within(100_000, 10, 3500) == (3500, 1)


def test_pdf_scale_is_the_dpi_unless_the_page_would_exceed_the_cap() -> None:
    assert pdf_scale(612, 792, 150, 3500) == pytest.approx(150 / 72)
    poster = pdf_scale(72 * 40, 72 * 30, 150, 3500)  # 40x30 inches: 6000 px at 150 dpi
    assert 72 * 40 * poster <= 3500
    assert 72 * 40 * poster == pytest.approx(3500)


def test_a_pdf_page_is_rendered_at_exactly_the_dpi(tmp_path: Path) -> None:
    # US letter, 8.5x11 inches: float rounding must not add a pixel to 11 x 150.
    [page] = convert(tmp_path, samples.pdf([(612, 792)]), "pdf")
    image = load(tmp_path, page)
    assert (page.width, page.height, image.width, image.height) == (1275, 1650, 1275, 1650)


def test_large_jpeg_is_scaled_down_to_fit_keeping_its_aspect_ratio(tmp_path: Path) -> None:
    [page] = convert(tmp_path, samples.jpeg(8000, 6000), "jpeg")
    assert (page.page, page.width, page.height) == (1, 3500, 2625)
    image = load(tmp_path, page)
    assert (image.width, image.height, image.format) == (3500, 2625, "uchar")


def test_small_image_is_never_scaled_up(tmp_path: Path) -> None:
    [page] = convert(tmp_path, samples.png(120, 80), "png")
    assert (page.width, page.height) == (120, 80)


def test_exif_orientation_turns_the_image_upright(tmp_path: Path) -> None:
    # Orientation 6: stored landscape, shown rotated a quarter turn, so portrait.
    [page] = convert(tmp_path, samples.jpeg(400, 200, orientation=6), "jpeg")
    assert (page.width, page.height) == (200, 400)


def test_cmyk_jpeg_becomes_8_bit_srgb(tmp_path: Path) -> None:
    [page] = convert(tmp_path, samples.cmyk_jpeg(300, 200), "jpeg")
    image = load(tmp_path, page)
    assert (image.bands, image.interpretation, image.format) == (3, "srgb", "uchar")


def test_16_bit_png_becomes_8_bit_with_the_same_picture(tmp_path: Path) -> None:
    [page] = convert(tmp_path, samples.png(300, 200, bitdepth=16), "png")
    image = load(tmp_path, page)
    assert (image.bands, image.format) == (3, "uchar")
    expected = samples.gradient(300, 200).avg()
    assert image.avg() == pytest.approx(expected, abs=1)


def test_png_alpha_is_kept(tmp_path: Path) -> None:
    [page] = convert(tmp_path, samples.png(5000, 1000, alpha=True), "png")
    image = load(tmp_path, page)
    assert (page.width, page.height) == (3500, 700)
    assert image.bands == 4 and image.hasalpha()


def test_each_pdf_page_becomes_a_png_in_page_order(tmp_path: Path) -> None:
    sizes = [(200.0, 300.0), (300.0, 300.0), (400.0, 300.0)]
    pages = convert(tmp_path, samples.pdf(sizes), "pdf")
    assert [page.page for page in pages] == [1, 2, 3]
    # Rendered at 150 dpi: width grows with the page's width, so the order is visible.
    assert [(page.width, page.height) for page in pages] == [(417, 625), (625, 625), (834, 625)]
    assert [page.filename for page in pages] == [
        "page-0001.png",
        "page-0002.png",
        "page-0003.png",
    ]
    assert load(tmp_path, pages[2]).width == 834


def test_large_pdf_page_is_capped_to_fit(tmp_path: Path) -> None:
    [page] = convert(tmp_path, samples.pdf([(72 * 60, 72 * 20)]), "pdf")  # 60x20 inches
    assert page.width == 3500 and page.height <= 1167


def test_pixel_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"image too large: 100000x100000"):
        convert(tmp_path, samples.png_bomb(), "png")


def test_absurd_pdf_page_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="page 2 has an unusable size: 300x10 inches"):
        convert(tmp_path, samples.pdf([(612, 792), (72 * 300, 72 * 10)]), "pdf")


def test_too_many_pdf_pages_are_refused(tmp_path: Path) -> None:
    limits = Limits(max_side=3500, pdf_dpi=150, max_pixels=250_000_000, max_pdf_pages=2)
    with pytest.raises(ConversionError, match=r"too many pages: 3 \(at most 2\)"):
        convert(tmp_path, samples.pdf([(100, 100)] * 3), "pdf", limits)


def test_encrypted_pdf_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"encrypted \(password protected\)"):
        convert(tmp_path, samples.pdf([(612, 792)], encrypt=True), "pdf")


@pytest.mark.parametrize(
    ("content", "kind", "message"),
    [
        (samples.jpeg(300, 200)[:400], "jpeg", "not a readable image"),
        (samples.png(300, 200)[:200], "png", "not a readable image"),
        (b"%PDF-1.4\nnot really a pdf", "pdf", "not a readable PDF"),
    ],
)
def test_corrupt_file_is_refused_clearly(
    tmp_path: Path, content: bytes, kind: FileKind, message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path, content, kind)


def test_a_truncated_jpeg_fails_instead_of_coming_out_grey(tmp_path: Path) -> None:
    # Declares 15000x15000 (under the pixel cap), holds a tenth of the data, ends cleanly.
    with pytest.raises(ConversionError, match=r"not a readable image: .*Corrupt JPEG data"):
        convert(tmp_path, samples.truncated_jpeg(), "jpeg")


def test_each_page_gets_a_small_preview(tmp_path: Path) -> None:
    pages = convert(tmp_path, samples.pdf([(612, 792), (100, 50)]), "pdf")
    assert [page.preview_filename for page in pages] == [
        "page-0001.preview.png",
        "page-0002.preview.png",
    ]
    previews = [
        pyvips.Image.new_from_buffer((tmp_path / "out" / page.preview_filename).read_bytes(), "")
        for page in pages
    ]
    # 256 px wide keeping the aspect ratio; a page narrower than that is not enlarged.
    assert [(preview.width, preview.height) for preview in previews] == [(256, 331), (209, 105)]
    assert pages[0].size_bytes == (tmp_path / "out" / "page-0001.png").stat().st_size


def test_a_pdf_with_more_pages_than_the_quota_leaves_is_refused_before_rendering(
    tmp_path: Path,
) -> None:
    quota = OutputQuota(pages=2, pixels=10**10, bytes=10**9)
    message = "more pages than ERRANDS_UPLOAD_MAX_OUTPUT_PAGES allows \\(at page 1\\)"
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path, samples.pdf([(100, 100)] * 3), "pdf", quota=quota)
    assert list((tmp_path / "out").iterdir()) == []


def test_output_quota_of_pixels_and_bytes_stops_at_the_page_that_exceeds_it(
    tmp_path: Path,
) -> None:
    # A US letter page at 150 dpi is 1275x1650 = 2,103,750 pixels.
    two_pages_of_pixels = OutputQuota(pages=100, pixels=2 * 2_103_750, bytes=10**9)
    with pytest.raises(ConversionError, match=r"more pixels than .* allows \(at page 3\)"):
        convert(tmp_path, samples.pdf([(612, 792)] * 5), "pdf", quota=two_pages_of_pixels)
    assert not (tmp_path / "out" / "page-0003.png").exists()

    (tmp_path / "again").mkdir()
    few_bytes = OutputQuota(pages=100, pixels=10**10, bytes=100)
    with pytest.raises(ConversionError, match=r"more bytes than .* allows \(at page 1\)"):
        convert(tmp_path / "again", samples.png(300, 200), "png", quota=few_bytes)
