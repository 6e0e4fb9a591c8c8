"""Verification of raw objects as images (DESIGN.md section 7: bad input is quarantined).

Every check returns a reason a person can act on; nothing raises for bad *content*.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats the pipeline decodes. MPO is what many cameras write for JPEGs with previews.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF"})
# Modes that convert to RGB by a stated rule (stage 2): palette/gray/alpha/CMYK/16-bit.
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


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of verifying one file. Width and height are in pixels, before EXIF rotation."""

    ok: bool
    reason: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int = 1

    def as_details(self) -> dict[str, object]:
        """Format, mode, width/height (pixels, before EXIF rotation), frames: entry fields."""
        return {
            "format": self.format,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
        }


def verify_image(path: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageCheck:
    """Open and fully decode ``path`` (cheaply) to prove it is a usable image.

    JPEGs are decoded with libjpeg's DCT scaling (``draft``) at 1/8 size: every byte of
    entropy-coded data is still read, so truncation is caught at a fraction of the cost.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ImageCheck(False, f"cannot read staged file: {exc}")
    if size == 0:
        return ImageCheck(False, "empty object (0 bytes)")
    fmt: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt, mode = img.format or "unknown", img.mode
                width, height = img.size
                if fmt not in SUPPORTED_FORMATS:
                    return ImageCheck(
                        False, f"unsupported image format {fmt}", fmt, mode, width, height
                    )
                if width <= 0 or height <= 0:
                    return ImageCheck(
                        False, f"invalid dimensions {width}x{height}", fmt, mode, width, height
                    )
                if width * height > max_pixels:
                    return ImageCheck(
                        False,
                        f"decompression bomb: {width}x{height} = {width * height} pixels exceeds "
                        f"MAX_IMAGE_PIXELS={max_pixels}",
                        fmt,
                        mode,
                        width,
                        height,
                    )
                if mode not in SUPPORTED_MODES:
                    return ImageCheck(
                        False, f"unsupported colour mode {mode}", fmt, mode, width, height
                    )
                frames = int(getattr(img, "n_frames", 1) or 1)
                if fmt in ("JPEG", "MPO"):
                    img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
    except UnidentifiedImageError:
        return ImageCheck(False, "not an image (unrecognised format)")
    except Image.DecompressionBombError as exc:
        return ImageCheck(False, f"decompression bomb: {exc}")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated", ...).
        return ImageCheck(
            False, f"truncated or corrupt image data: {exc}", fmt, mode, width, height
        )
    return ImageCheck(True, None, fmt, mode, width, height, frames)


def check_annotation_file(path: Path) -> ImageCheck:
    """A `.json` under the raw prefix is an annotation file: it must at least parse.

    Its format (Label Studio export list vs COCO dict) is told apart here; conversion is
    stage 1's augment step.
    """
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return ImageCheck(False, f"annotation file is not valid JSON: {exc}")
    if isinstance(doc, list):
        return ImageCheck(True, format="label_studio")
    if isinstance(doc, dict) and {"images", "annotations"} <= doc.keys():
        return ImageCheck(True, format="coco")
    return ImageCheck(
        False,
        "JSON is neither a Label Studio export (a list of tasks) nor COCO (images + annotations)",
    )


def verification_policy_hash(max_image_pixels: int) -> str:
    """A 12-hex digest of everything that decides whether an object passes ingest (the
    bomb limit, the accepted formats and modes): the ``raw_images`` asset's code version,
    so a change shows in Dagster as stale partitions."""
    doc = {
        "max_image_pixels": max_image_pixels,
        "formats": sorted(SUPPORTED_FORMATS),
        "modes": sorted(SUPPORTED_MODES),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
