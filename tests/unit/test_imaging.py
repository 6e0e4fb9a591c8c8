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
)

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
