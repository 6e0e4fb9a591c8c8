"""Decoding images: the one way every stage turns a file into pixels.

**Frame.** Every stage works in the *displayed* frame: the image as a viewer shows it, its
EXIF orientation applied. Widths and heights recorded anywhere in the pipeline are pixels
of that frame, and annotation coordinates are read in it (browsers, and so Label Studio,
display images with their orientation applied).

**Orientation, exactly once.** Pillow's TIFF reader applies the TIFF ``Orientation`` tag
itself (it reports the upright size before loading and drops the tag on load; images are
opened from file objects, because its memory-mapped path for uncompressed TIFFs skips
that step); for every other format the EXIF orientation (tag 0x0112, values 1-8 as in the
EXIF 2.3 spec) is read from the EXIF block alone, as browsers do (an XMP
``tiff:Orientation`` is ignored), once, in :func:`read_header`, and applied after loading
with a plain transpose (``ImageOps.exif_transpose`` rewrites the EXIF block and fails on
malformed ones). A damaged EXIF block means orientation 1: the image is shown as stored.
``tests/unit/test_imaging.py`` checks all eight orientations across JPEG, PNG, WebP and
TIFF.

**Colour rule** (8-bit RGB out): alpha is composited onto a background (white unless
stated); palette, grayscale and 1-bit images are expanded to RGB; CMYK goes through
Pillow's conversion (no ICC profile); 16-bit images keep their top 8 bits, 32-bit integer
images are scaled so their maximum fits 8 bits.

**Size limit.** Pillow's own decompression-bomb limit is switched off here
(``Image.MAX_IMAGE_PIXELS = None``): the pipeline's limit (``max_pixels``, a setting) is
checked by :func:`unsupported` from the header before any pixel is decoded, so a setting
above Pillow's default works and one below it is enforced.

**Corruption.** libjpeg recovers from damaged scan data with a warning and garbage pixels;
:func:`jpeg_corruption` turns such a warning into a reason to quarantine the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

# The pipeline's own limit (``unsupported``) replaces Pillow's; see the module docstring.
Image.MAX_IMAGE_PIXELS = None

# Formats the pipeline decodes. MPO is what many cameras write for JPEGs with previews.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF"})
# Modes that convert to RGB by the colour rule: palette/gray/alpha/CMYK/16- and 32-bit.
SUPPORTED_MODES = frozenset(
    {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I;16",
        "I;16B",
        "I;16L",
        "I",
    }
)
#: Version of the decoding rules above (frame, orientation source, colour rule). It is part
#: of every stage's code version / policy hash, so a change that alters what an image
#: decodes to marks partitions stale and writes new outputs beside the old ones.
#: 2: orientation from the EXIF block only (not XMP); TIFFs opened without mmap; a grey or
#: RGB PNG's tRNS colour is transparent (composited like alpha).
DECODE_RULES_VERSION = 2
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own bomb threshold (2x its warning level)
WHITE = (255, 255, 255)
ORIENTATION_TAG = 0x0112
#: EXIF orientations that swap width and height (the image is transposed to display it).
TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: Formats whose Pillow reader applies the orientation itself (see the module docstring).
SELF_ORIENTING_FORMATS = frozenset({"TIFF"})
# libjpeg's "N extraneous bytes before marker 0xXX" (see jpeg_corruption).
_EXTRANEOUS = re.compile(r"extraneous bytes before marker 0x([0-9a-f]{2})", re.IGNORECASE)


# EXIF orientation -> the operation that displays the stored pixels upright, on an
# (H, W, C) array (as Pillow's ImageOps.exif_transpose does; tests/unit/test_imaging.py
# and tests/unit/normalize/test_image.py check all eight).
ORIENT_OPS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}
# EXIF orientation -> the Pillow transpose that displays the stored image upright (the
# table of ImageOps.exif_transpose).
TRANSPOSE_OPS: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# JPEG colour modes libjpeg-turbo converts to RGB itself; CMYK/YCCK go through Pillow, so
# they follow the one CMYK rule.
FAST_JPEG_MODES = frozenset({"RGB", "L", "YCbCr"})


class UndecodableImage(ValueError):
    """A file that is not a usable image; the message is the reason, for the manifest."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says. ``width``/``height`` in pixels of the displayed frame;
    ``orientation`` is the EXIF value found (1 when none); ``frames`` counts animation
    frames or pages (the first is used)."""

    format: str
    mode: str
    width: int
    height: int
    orientation: int = 1
    frames: int = 1


def orientation_of(img: Image.Image) -> int:
    """The EXIF orientation of an opened (not yet loaded) image: 1-8, or 1 when absent,
    out of range or unreadable (a damaged EXIF block: the image is shown as stored).

    Read from the EXIF block only (TIFF: its own tag), not from XMP, as browsers do."""
    try:
        if img.format in SELF_ORIENTING_FORMATS:
            value = img.tag_v2.get(ORIENTATION_TAG, 1)  # type: ignore[attr-defined]
        else:
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(ORIENTATION_TAG, 1)
    except Exception:  # any damage to the EXIF block means "as stored"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_header(img: Image.Image) -> ImageHeader:
    """The header of an opened (not yet loaded) image, sizes in the displayed frame."""
    orientation = orientation_of(img)
    width, height = img.size
    if orientation in TRANSPOSED_ORIENTATIONS and img.format not in SELF_ORIENTING_FORMATS:
        width, height = height, width
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
    except Exception:  # a damaged frame table: the first frame is still used
        frames = 1
    return ImageHeader(img.format or "unknown", img.mode, width, height, orientation, frames)


def upright(img: Image.Image, header: ImageHeader) -> Image.Image:
    """Load ``img`` and apply ``header.orientation`` once: the displayed frame."""
    img.load()
    op = TRANSPOSE_OPS.get(header.orientation)
    if op is None or header.format in SELF_ORIENTING_FORMATS:
        return img
    return img.transpose(op)


def to_rgb8(img: Image.Image, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """A Pillow image (any supported mode) as an RGB ``uint8`` array ``(H, W, 3)`` by the
    colour rule; ``background`` is the RGB alpha is composited onto."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        shift = 8 if img.mode != "I" else max(0, int(arr.max()).bit_length() - 8)
        img = Image.fromarray((arr >> shift).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        # A palette, grey or RGB PNG (or GIF) that marks one value transparent (tRNS):
        # that value is alpha 0, composited like any other alpha below.
        img = img.convert("RGBA")
    elif img.mode == "P":
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(canvas, rgba)
    return np.asarray(img.convert("RGB"))


def decode_rgb(
    path: Path,
    *,
    background: tuple[int, int, int] = WHITE,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """The image at ``path`` in its displayed frame, as RGB ``uint8`` ``(H, W, 3)``.

    Raises :class:`UndecodableImage` with the reason for a file that is not an image, is
    in an unsupported format or mode, exceeds ``max_pixels``, or is truncated or corrupt.
    Any other failure inside Pillow on hostile input (its plugins raise many exception
    types) is reported the same way, never as a traceback.
    """
    try:
        # A file object, not a path: Pillow memory-maps uncompressed files opened by name
        # and that path skips the TIFF reader's orientation step (module docstring).
        with path.open("rb") as fh, Image.open(fh) as img:
            header = read_header(img)
            if problem := unsupported(header, max_pixels):
                raise UndecodableImage(problem)
            if header.format in ("JPEG", "MPO") and img.mode in FAST_JPEG_MODES:
                fh.seek(0)
                pixels = _jpeg_rgb(fh.read(), header.orientation)
                if pixels is not None:
                    return pixels
            return to_rgb8(upright(img, header), background)
    except UndecodableImage:
        raise
    except UnidentifiedImageError:
        raise UndecodableImage("not an image (unrecognised format)") from None
    except Exception as exc:  # see the docstring
        raise UndecodableImage(f"truncated or corrupt image data: {exc}") from None


def _jpeg_rgb(data: bytes, orientation: int) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo directly (~1.8x faster than through Pillow for 12 MP
    here), oriented; None when it refuses the file (Pillow then decides)."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None
    op = ORIENT_OPS.get(orientation)
    return np.ascontiguousarray(op(pixels)) if op else pixels


def unsupported(header: ImageHeader, max_pixels: int) -> str | None:
    """Why an image with this header is refused (format, mode, size), or None."""
    size = f"{header.width}x{header.height}"
    if header.format not in SUPPORTED_FORMATS:
        return f"unsupported image format {header.format}"
    if header.width <= 0 or header.height <= 0:
        return f"invalid dimensions {size}"
    if header.width * header.height > max_pixels:
        return (
            f"decompression bomb: {size} = {header.width * header.height} pixels exceeds "
            f"MAX_IMAGE_PIXELS={max_pixels}"
        )
    if header.mode not in SUPPORTED_MODES:
        return f"unsupported colour mode {header.mode}"
    return None


def libjpeg_warning(data: bytes) -> str | None:
    """The first warning or error libjpeg-turbo reports decoding a JPEG at 1/8 scale (every
    entropy-coded byte is still read; luma only, the cheapest decode), or None when it
    decodes cleanly. ~7x faster than a full decode: 12 MP in ~20 ms here."""
    try:
        simplejpeg.decode_jpeg(
            data, colorspace="GRAY", min_factor=8, min_width=1, min_height=1, strict=True
        )
    except ValueError as exc:
        return str(exc)
    return None


def is_corruption(warning: str) -> bool:
    """Whether a libjpeg warning, alone, means damaged data. "Extraneous bytes before
    marker" counts too: once the scans begin, a marker preceded by stray bytes (a restart,
    a progressive scan's tables, the end of image) means the decoder lost sync with the
    entropy-coded data. Padding *between header segments* causes the same warning and is
    harmless; :func:`jpeg_corruption` tells the two apart from the bytes."""
    if _EXTRANEOUS.search(warning) is not None:
        return True
    return warning.startswith("Corrupt JPEG data") or "Premature end of JPEG file" in warning


def without_header_padding(data: bytes) -> bytes | None:
    """``data`` with the stray bytes between its header segments (before the first scan)
    removed, or None when there are none or the header cannot be walked.

    The walk follows libjpeg's ``next_marker`` (jdmarker.c): bytes other than ``0xFF``
    before a marker are discarded, ``0xFF`` fill bytes are skipped, standalone markers
    (SOI, RSTn, TEM) have no length, every other segment carries a 2-byte big-endian
    length that includes itself."""
    if not data.startswith(b"\xff\xd8"):
        return None
    kept, pos, padded = [data[:2]], 2, False
    while pos < len(data):
        start = pos
        while pos < len(data) and data[pos] != 0xFF:
            pos += 1
        if pos > start:
            padded = True
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            return None
        marker = data[pos]
        pos += 1
        if marker == 0x00:  # a stuffed zero is not a marker: discarded as libjpeg does
            padded = True
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            kept.append(bytes((0xFF, marker)))
            continue
        if pos + 2 > len(data):
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data, kept as is
            kept.append(b"\xff\xda" + data[pos:])
            return b"".join(kept) if padded else None
        kept.append(bytes((0xFF, marker)) + data[pos : pos + length])
        pos += length
    return None


def jpeg_corruption(data: bytes, warning: str | None = None) -> str | None:
    """libjpeg's warning about damaged data in a JPEG, or None when it decodes cleanly.

    libjpeg-turbo (:func:`libjpeg_warning`) reports damaged scan data as a warning and fills
    the rest with garbage; Pillow hides the warning. Stray bytes between header segments
    are padding libjpeg skips exactly: when the header has some, the file is checked again
    without them, so damage later in the scans is still found. A JPEG libjpeg-turbo cannot
    read at all (e.g. CMYK) is left to the other checks (None). ``warning`` is
    :func:`libjpeg_warning`'s result when the caller already has it.
    """
    if warning is None:
        warning = libjpeg_warning(data)
    if warning is None or not is_corruption(warning):
        return None
    if _EXTRANEOUS.search(warning) is not None and (clean := without_header_padding(data)):
        return jpeg_corruption(clean)
    return warning
