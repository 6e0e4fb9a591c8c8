"""The one decoder (imageml_core.imaging): orientation once for every format, the colour
rule, the displayed frame of header sizes, corrupt JPEG data."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageml_core.imaging import (
    UndecodableImage,
    decode_rgb,
    jpeg_corruption,
    read_header,
    without_header_padding,
)
from imageml_core.stages.ingest.verify import verify_image

# EXIF 2.3: how the stored pixels are shown, as numpy operations on an (H, W) array.
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}
LOSSLESS = ("PNG", "WEBP", "TIFF")


def _stored(width: int = 40, height: int = 20) -> np.ndarray:
    """An asymmetric picture: four coloured quadrants and a white mark near the top-left."""
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2, : width // 2] = (200, 30, 30)
    a[: height // 2, width // 2 :] = (30, 200, 30)
    a[height // 2 :, : width // 2] = (30, 30, 200)
    a[height // 2 :, width // 2 :] = (200, 200, 30)
    a[1:4, 1:6] = 255
    return a


def _write(path: Path, pixels: np.ndarray, fmt: str, orientation: int) -> None:
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "TIFF":
        img.save(path, "TIFF", tiffinfo={0x0112: orientation})
    elif fmt == "WEBP":
        img.save(path, "WEBP", lossless=True, exif=exif.tobytes())
    elif fmt == "JPEG":
        img.save(path, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    else:
        img.save(path, fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_every_orientation_is_applied_exactly_once(
    tmp_path: Path, fmt: str, orientation: int
) -> None:
    stored = _stored()
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    _write(path, stored, fmt, orientation)
    expected = DISPLAY[orientation](stored)
    with Image.open(path) as img:
        header = read_header(img)
    assert (header.height, header.width) == expected.shape[:2]
    assert header.orientation == orientation
    got = decode_rgb(path)
    assert got.shape == expected.shape
    tolerance = 0 if fmt in LOSSLESS else 12  # JPEG at q100 4:4:4 is nearly lossless
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_formats_without_orientation_decode_as_stored(tmp_path: Path, fmt: str) -> None:
    stored = _stored()
    path = tmp_path / f"plain.{fmt.lower()}"
    Image.fromarray(stored).save(path, fmt)
    got = decode_rgb(path)
    assert got.shape == stored.shape
    assert np.abs(got.astype(int) - stored.astype(int)).max() <= (40 if fmt == "GIF" else 0)


def test_the_issue_cases_come_out_in_the_displayed_frame(tmp_path: Path) -> None:
    """A TIFF stored 200x100 with orientation 6 is 100x200; so is the JPEG."""
    for fmt in ("TIFF", "JPEG"):
        path = tmp_path / f"six.{fmt.lower()}"
        _write(path, _stored(200, 100), fmt, 6)
        with Image.open(path) as img:
            header = read_header(img)
        assert (header.width, header.height) == (100, 200), fmt
        assert decode_rgb(path).shape == (200, 100, 3), fmt


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent: the background
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (100, 255), (100, 100, 100)),
        ("L", 77, (77, 77, 77)),
    ],
)
def test_alpha_and_gray_follow_the_colour_rule(
    tmp_path: Path, mode: str, pixel: object, expected: tuple[int, int, int]
) -> None:
    path = tmp_path / "c.png"
    Image.new(mode, (4, 3), pixel).save(path)  # type: ignore[arg-type]
    assert tuple(decode_rgb(path)[1, 1]) == expected
    assert tuple(decode_rgb(path, background=(0, 0, 0))[1, 1]) in (expected, (0, 0, 0))


def test_palette_with_transparency_and_16_bit_gray(tmp_path: Path) -> None:
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    assert tuple(decode_rgb(tmp_path / "p.png")[0, 0]) == (255, 255, 255)
    g = Image.fromarray(np.full((3, 3), 0xABCD, np.uint16))
    g.save(tmp_path / "g16.png")
    assert tuple(decode_rgb(tmp_path / "g16.png")[0, 0]) == (0xAB, 0xAB, 0xAB)


def test_a_grey_or_rgb_png_transparent_colour_is_composited(tmp_path: Path) -> None:
    # tRNS on a grey or RGB PNG marks one colour transparent, as a palette's does.
    grey = Image.new("L", (4, 4), 77)
    grey.putpixel((0, 0), 9)
    grey.save(tmp_path / "l.png", transparency=9)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    rgb.putpixel((0, 0), (9, 9, 9))
    rgb.save(tmp_path / "rgb.png", transparency=(9, 9, 9))
    for name, kept in (("l.png", (77, 77, 77)), ("rgb.png", (1, 2, 3))):
        pixels = decode_rgb(tmp_path / name)
        assert tuple(pixels[0, 0]) == (255, 255, 255), name
        assert tuple(pixels[1, 1]) == kept, name


def test_what_is_not_an_image_gives_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"plain text")
    with pytest.raises(UndecodableImage, match="not an image"):
        decode_rgb(path)
    Image.new("RGB", (50, 50)).save(path, "JPEG")
    with pytest.raises(UndecodableImage, match="decompression bomb"):
        decode_rgb(path, max_pixels=100)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UndecodableImage, match="truncated or corrupt"):
        decode_rgb(path)


def _photo_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    small = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((800, 600), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_overwritten_scan_data_is_corruption_extraneous_bytes_are_not() -> None:
    good = _photo_jpeg()
    assert jpeg_corruption(good) is None
    damaged = bytearray(good)
    mid = len(good) // 2
    damaged[mid : mid + 2000] = bytes(random.Random(1).randrange(256) for _ in range(2000))
    reason = jpeg_corruption(bytes(damaged))
    assert reason is not None and reason.startswith("Corrupt JPEG data")
    sos = good.index(b"\xff\xda")
    padded = good[:sos] + b"\x00\x00\x00" + good[sos:]
    assert jpeg_corruption(padded) is None  # libjpeg skips them exactly


def test_scan_data_left_over_before_the_end_marker_is_corruption() -> None:
    """Damage can make libjpeg lose sync and find scan data left before the end-of-image
    marker (0xd9): "extraneous bytes", but corruption, unlike the same warning before a
    header marker (harmless padding, checked above). Seen with 1,500 bytes overwritten in
    the middle of a noisy 800x600 photo."""
    rng = np.random.default_rng(sum((800, 600)))
    buf = io.BytesIO()
    Image.fromarray((rng.random((600, 800, 3)) * 255).astype(np.uint8)).save(
        buf, "JPEG", quality=90
    )
    damaged = bytearray(buf.getvalue())
    mid = len(damaged) // 2
    damaged[mid : mid + 1500] = bytes(random.Random(2).randrange(256) for _ in range(1500))
    reason = jpeg_corruption(bytes(damaged))
    assert reason is not None and "extraneous bytes before marker 0xd9" in reason


def _progressive_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    small = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((800, 600), Image.BICUBIC).save(
        buf, "JPEG", quality=90, progressive=True
    )
    return buf.getvalue()


def test_lost_sync_before_a_progressive_scans_tables_is_corruption() -> None:
    """In a progressive JPEG every scan after the first brings its own Huffman tables
    (marker 0xc4): stray bytes before one are scan data libjpeg lost sync with, not
    padding. Found by overwriting 256 bytes of an 800x600 photo (seed 3); 40% of its
    pixels came out wrong while the check passed it."""
    good = _progressive_jpeg()
    assert jpeg_corruption(good) is None
    r = random.Random(3)
    damaged = bytearray(good)
    start = r.randrange(good.index(b"\xff\xda") + 20, len(good) - 258)
    damaged[start : start + 256] = bytes(r.randrange(256) for _ in range(256))
    reason = jpeg_corruption(bytes(damaged))
    assert reason is not None and "extraneous bytes before marker 0xc4" in reason


def test_header_padding_does_not_hide_damage_after_it() -> None:
    """libjpeg reports only its first warning: padding between header segments (harmless)
    once hid damaged scan data behind it. The file is checked again without the padding."""
    good = _photo_jpeg()
    sos = good.index(b"\xff\xda")
    padded = good[:sos] + b"\x00\x00\x00" + good[sos:]
    assert jpeg_corruption(padded) is None
    assert without_header_padding(padded) == good
    damaged = bytearray(padded)
    mid = len(padded) // 2
    damaged[mid : mid + 2000] = bytes(random.Random(1).randrange(256) for _ in range(2000))
    reason = jpeg_corruption(bytes(damaged))
    assert reason is not None and reason.startswith("Corrupt JPEG data")
    assert "before marker 0xda" not in reason  # the padding's warning is not the verdict


def _retyped_exif_jpeg() -> bytes:
    """A JPEG (orientation 6) whose EXIF DateTime entry was retyped: tag 0x0132 (ASCII)
    became 0x0106 (a SHORT tag) with its ASCII value kept. Pillow's EXIF rewrite in
    ``ImageOps.exif_transpose`` raised on it, outside the errors the decoder caught."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0132] = "2020:01:01 00:00:00"
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue().replace(b"\x01\x32\x00\x02", b"\x01\x06\x00\x02", 1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_malformed_exif_block_never_escapes_as_a_traceback(tmp_path: Path, fmt: str) -> None:
    """The orientation survives (it is readable), the rest of the block is not needed."""
    jpeg = _retyped_exif_jpeg()
    with Image.open(io.BytesIO(jpeg)) as img:
        raw_exif = img.info["exif"]
        pixels = np.asarray(img.convert("RGB"))
    path = tmp_path / f"bad-exif.{fmt.lower()}"
    if fmt == "JPEG":
        path.write_bytes(jpeg)
    else:
        Image.fromarray(pixels).save(
            path, fmt, exif=raw_exif, **({"lossless": True} if fmt == "WEBP" else {})
        )
    with Image.open(path) as img:
        header = read_header(img)
    assert (header.width, header.height, header.orientation) == (40, 50, 6)
    assert decode_rgb(path).shape == (50, 40, 3)
    check = verify_image(path)
    assert check.ok and (check.width, check.height) == (40, 50)


def test_orientation_comes_from_exif_not_xmp(tmp_path: Path) -> None:
    """Browsers, and so Label Studio, ignore an XMP ``tiff:Orientation``; so does the
    pipeline (Pillow's ``getexif`` would read it)."""
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    path = tmp_path / "xmp.jpg"
    Image.fromarray(_stored()).save(path, "JPEG", xmp=xmp)
    with Image.open(path) as img:
        assert img.getexif().get(0x0112) == 6  # what Pillow alone would apply
        header = read_header(img)
    assert (header.width, header.height, header.orientation) == (40, 20, 1)
    assert decode_rgb(path).shape == (20, 40, 3)


def test_an_uncompressed_tiff_is_oriented_too(tmp_path: Path) -> None:
    """Pillow memory-maps a one-strip uncompressed grayscale TIFF opened by name, and that
    path skipped its orientation step: the header said 100x200, the pixels were 200x100."""
    path = tmp_path / "six.tif"
    Image.fromarray(_stored(200, 100)[..., 0]).save(path, "TIFF", tiffinfo={0x0112: 6})
    with Image.open(path) as img:
        assert len(img.tile) == 1 and img.tile[0].codec_name == "raw"  # the mmap case
    expected = DISPLAY[6](_stored(200, 100)[..., :1].repeat(3, axis=2))
    assert np.array_equal(decode_rgb(path), expected)
    check = verify_image(path)
    assert check.ok and (check.width, check.height) == (100, 200)


def test_a_broken_frame_chain_keeps_the_first_frame(tmp_path: Path) -> None:
    """A TIFF whose next-IFD offset points past the end: Pillow's ``n_frames`` raised a
    TypeError out of the header read. The first frame is what the pipeline uses."""
    buf = io.BytesIO()
    Image.fromarray(_stored()).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = int.from_bytes(data[4:8], "little")
    entries = int.from_bytes(data[ifd : ifd + 2], "little")
    next_at = ifd + 2 + 12 * entries
    data[next_at : next_at + 4] = (len(data) + 100).to_bytes(4, "little")
    path = tmp_path / "chain.tif"
    path.write_bytes(bytes(data))
    with Image.open(path) as img:
        assert read_header(img).frames == 1
    assert decode_rgb(path).shape == (20, 40, 3)
    assert verify_image(path).ok


def test_a_pixel_limit_above_pillows_own_is_honoured(tmp_path: Path) -> None:
    """MAX_IMAGE_PIXELS is ours: set above Pillow's bomb threshold (178,956,970 pixels),
    a 182-megapixel image passed our check and was still refused by Pillow."""
    path = tmp_path / "big.png"
    Image.new("1", (13_500, 13_500)).save(path, optimize=False)
    check = verify_image(path, max_pixels=200_000_000)
    assert check.ok, check.reason
    refused = verify_image(path, max_pixels=100_000_000)
    assert not refused.ok and "exceeds MAX_IMAGE_PIXELS=100000000" in (refused.reason or "")
