"""Decoding images: the one way every stage turns a file into pixels.

**Frame.** Every stage works in the *displayed* frame: the image as a viewer shows it, its
EXIF orientation applied. Widths and heights recorded anywhere in the pipeline are pixels
of that frame, and annotation coordinates are read in it (browsers, and so Label Studio,
display images with their orientation applied).

**Orientation, exactly once.** Pillow's TIFF reader applies the TIFF ``Orientation`` tag
itself (it reports the upright size before loading and drops the tag on load); for every
other format the EXIF orientation (tag 0x0112, values 1-8 as in the EXIF 2.3 spec) is
applied after loading with ``ImageOps.exif_transpose``. :func:`read_header` and
:func:`decode_rgb` both follow that rule; ``tests/unit/test_imaging.py`` checks all eight
orientations across JPEG, PNG, WebP and TIFF.

**Colour rule** (8-bit RGB out): alpha is composited onto a background (white unless
stated); palette, grayscale and 1-bit images are expanded to RGB; CMYK goes through
Pillow's conversion (no ICC profile); 16-bit images keep their top 8 bits, 32-bit integer
images are scaled so their maximum fits 8 bits.

**Corruption.** libjpeg recovers from damaged scan data with a warning and garbage pixels;
:func:`jpeg_corruption` turns such a warning into a reason to quarantine the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

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
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own bomb threshold (2x its warning level)
WHITE = (255, 255, 255)
ORIENTATION_TAG = 0x0112
#: EXIF orientations that swap width and height (the image is transposed to display it).
TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: Formats whose Pillow reader applies the orientation itself (see the module docstring).
SELF_ORIENTING_FORMATS = frozenset({"TIFF"})
# libjpeg's "N extraneous bytes before marker 0xXX": between header segments that is
# padding it skips exactly; before the end of the image (EOI, 0xd9) or a restart marker
# (RST0-7, 0xd0-0xd7) it is scan data the decoder lost sync with: corruption.
_EXTRANEOUS = re.compile(r"extraneous bytes before marker 0x([0-9a-f]{2})", re.IGNORECASE)
_SCAN_MARKERS = frozenset({0xD9, *range(0xD0, 0xD8)})


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
    """The EXIF orientation of an opened image, 1 when absent or not a valid value (1-8)."""
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: shown as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_header(img: Image.Image) -> ImageHeader:
    """The header of an opened (not yet loaded) image, sizes in the displayed frame."""
    orientation = orientation_of(img)
    width, height = img.size
    if orientation in TRANSPOSED_ORIENTATIONS and img.format not in SELF_ORIENTING_FORMATS:
        width, height = height, width
    frames = int(getattr(img, "n_frames", 1) or 1)
    return ImageHeader(img.format or "unknown", img.mode, width, height, orientation, frames)


def upright(img: Image.Image) -> Image.Image:
    """Load ``img`` and apply its orientation once: the displayed frame."""
    img.load()
    return ImageOps.exif_transpose(img)


def to_rgb8(img: Image.Image, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """A Pillow image (any supported mode) as an RGB ``uint8`` array ``(H, W, 3)`` by the
    colour rule; ``background`` is the RGB alpha is composited onto."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        shift = 8 if img.mode != "I" else max(0, int(arr.max()).bit_length() - 8)
        img = Image.fromarray((arr >> shift).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
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
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                header = read_header(img)
                if problem := unsupported(header, max_pixels):
                    raise UndecodableImage(problem)
                if header.format in ("JPEG", "MPO") and img.mode in FAST_JPEG_MODES:
                    pixels = _jpeg_rgb(path.read_bytes(), header.orientation)
                    if pixels is not None:
                        return pixels
                return to_rgb8(upright(img), background)
    except UnidentifiedImageError:
        raise UndecodableImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise UndecodableImage(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, UndecodableImage):
            raise
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
    """Whether a libjpeg warning means damaged data (see :func:`jpeg_corruption`)."""
    extraneous = _EXTRANEOUS.search(warning)
    if extraneous is not None:
        return int(extraneous.group(1), 16) in _SCAN_MARKERS
    return warning.startswith("Corrupt JPEG data") or "Premature end of JPEG file" in warning


def jpeg_corruption(data: bytes) -> str | None:
    """libjpeg's warning about damaged data in a JPEG, or None when it decodes cleanly.

    libjpeg-turbo (:func:`libjpeg_warning`) reports damaged scan data as a warning and fills
    the rest with garbage; Pillow hides the warning. Extraneous bytes before a header marker
    are padding libjpeg skips exactly; before the end of the image or a restart marker they
    are scan data it lost sync with (corruption). A JPEG libjpeg-turbo cannot read at all
    (e.g. CMYK) is left to the other checks (None).
    """
    warning = libjpeg_warning(data)
    return warning if warning is not None and is_corruption(warning) else None
