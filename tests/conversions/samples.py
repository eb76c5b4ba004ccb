"""Generated images and PDFs for the conversion tests: each built in memory, small on disk."""

import hashlib
import struct
import zlib

import pyvips


def gradient(width: int, height: int, bands: int = 3) -> pyvips.Image:
    """A smooth picture (compresses to a few kilobytes even when large)."""
    ramp = (pyvips.Image.xyz(width, height)[0] * (255 / max(width, 1))).cast("uchar")
    image = ramp.bandjoin([ramp] * (bands - 1)) if bands > 1 else ramp
    return image.copy(interpretation="srgb" if bands >= 3 else "b-w")


def jpeg(width: int, height: int, *, orientation: int | None = None, quality: int = 50) -> bytes:
    image = gradient(width, height)
    if orientation is not None:
        image = image.copy()
        image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(image.jpegsave_buffer(Q=quality))


def cmyk_jpeg(width: int, height: int) -> bytes:
    cmyk = gradient(width, height, bands=4).copy(interpretation="cmyk")
    return bytes(cmyk.jpegsave_buffer())


def png(width: int, height: int, *, alpha: bool = False, bitdepth: int = 8) -> bytes:
    image = gradient(width, height, bands=4 if alpha else 3)
    if bitdepth == 16:
        image = (image.cast("ushort") * 257).copy(interpretation="rgb16")
    return bytes(image.pngsave_buffer(bitdepth=bitdepth))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming a huge image over a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def pdf(page_sizes_pt: list[tuple[float, float]], *, encrypt: bool = False) -> bytes:
    """A PDF with one page per (width, height) in points, each page showing its number.

    `encrypt` adds a standard security handler whose user password is not empty, so a reader
    without the password cannot open it.
    """
    objects: list[bytes] = []
    page_ids = [4 + 2 * index for index in range(len(page_sizes_pt))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = b" ".join(b"%d 0 R" % page_id for page_id in page_ids)
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids)))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for number, (width, height) in enumerate(page_sizes_pt, start=1):
        content = b"0.2 0.4 0.8 rg 10 10 %.2f %.2f re f BT /F1 24 Tf 20 20 Td (Page %d) Tj ET" % (
            width / 2,
            height / 2,
            number,
        )
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (width, height, len(objects) + 2)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    trailer_extra = b""
    if encrypt:
        digest = hashlib.md5(b"errands", usedforsecurity=False).digest()
        objects.append(
            b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -3904 >>"
            % ((digest * 2).hex().encode(), (digest[::-1] * 2).hex().encode())
        )
        file_id = digest.hex().encode()
        trailer_extra = b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (len(objects), file_id, file_id)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer_extra,
        xref_at,
    )
    return bytes(out)


def truncated_jpeg(width: int = 15000, height: int = 15000) -> bytes:
    """A JPEG declaring `width`x`height` whose data stops a tenth of the way in, then ends as a
    whole file would: decoders warn and fill the rest with grey unless told to fail."""
    whole = jpeg(width, height)
    return whole[: len(whole) // 10] + b"\xff\xd9"


def _pdf_from_objects(objects: list[bytes], root: int = 1) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref_at,
    )
    return bytes(out)


def nested_forms_pdf(depth: int = 20) -> bytes:
    """A one-page PDF of a few kilobytes whose page draws form 'depth', which draws form
    'depth - 1' twice, and so on: 2**depth rectangles to paint, seconds to minutes of work (and
    memory growing all the while)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /XObject << /F %d 0 R >> >> >>" % (5 + depth),
    ]
    page = b"/F Do"
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(page), page))
    rectangle = b"0.5 g 10 10 100 100 re f"
    objects.append(
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Length %d >>\nstream\n%s\n"
        b"endstream" % (len(rectangle), rectangle)
    )
    twice = b"/F Do /F Do"
    for level in range(1, depth + 1):
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792]"
            b" /Resources << /XObject << /F %d 0 R >> >> /Length %d >>\nstream\n%s\nendstream"
            % (4 + level, len(twice), twice)
        )
    return _pdf_from_objects(objects)
