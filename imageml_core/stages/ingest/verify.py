"""Verification of raw objects as images (DESIGN.md section 7: bad input is quarantined).

Every check returns a reason a person can act on; nothing raises for bad *content*. What
decodes, and in which frame, is :mod:`imageml_core.imaging`'s rule, shared by every stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from imageml_core.imaging import (
    DECODE_RULES_VERSION,
    DEFAULT_MAX_IMAGE_PIXELS,
    SUPPORTED_FORMATS,
    SUPPORTED_MODES,
    ImageHeader,
    jpeg_corruption,
    libjpeg_warning,
    read_header,
    unsupported,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageCheck",
    "check_annotation_file",
    "check_label_config",
    "verification_policy_hash",
    "verify_image",
]


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of verifying one file. ``width``/``height`` are pixels of the displayed
    frame (EXIF orientation applied, :mod:`imageml_core.imaging`); ``orientation`` is the
    EXIF value found (1 when none)."""

    ok: bool
    reason: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int = 1
    orientation: int | None = None

    @classmethod
    def of(cls, header: ImageHeader, reason: str | None = None) -> ImageCheck:
        """A check carrying ``header``'s fields; failed when ``reason`` is given."""
        return cls(
            reason is None,
            reason,
            header.format,
            header.mode,
            header.width,
            header.height,
            header.frames,
            header.orientation,
        )

    def as_details(self) -> dict[str, object]:
        """Format, mode, displayed width/height (pixels), frames, orientation: entry fields."""
        return {
            "format": self.format,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "orientation": self.orientation,
        }


def verify_image(path: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageCheck:
    """Open and fully decode ``path`` (cheaply) to prove it is a usable image.

    JPEGs are decoded by libjpeg-turbo at 1/8 scale (every byte of entropy-coded data is
    still read, at a fraction of the cost); a clean decode is the whole check. On a warning
    Pillow decodes too (its message names truncation precisely), and a warning about
    damaged scan data, which Pillow hides, is corruption
    (:func:`~imageml_core.imaging.jpeg_corruption`). Other formats are decoded by Pillow.
    Format, mode and size rules are :func:`~imageml_core.imaging.unsupported`'s.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ImageCheck(False, f"cannot read staged file: {exc}")
    if size == 0:
        return ImageCheck(False, "empty object (0 bytes)")
    header: ImageHeader | None = None
    corruption: str | None = None
    try:
        # A file object, not a path: see imageml_core.imaging (TIFF orientation).
        with path.open("rb") as fh, Image.open(fh) as img:
            header = read_header(img)
            if problem := unsupported(header, max_pixels):
                return ImageCheck.of(header, problem)
            if header.format in ("JPEG", "MPO"):
                # libjpeg-turbo reads every entropy-coded byte at 1/8 scale; a clean
                # decode is the whole check. Otherwise Pillow's verdict (it names
                # truncation precisely) and libjpeg's warning decide below.
                fh.seek(0)
                data = fh.read()
                warning = libjpeg_warning(data)
                if warning is None:
                    return ImageCheck.of(header)
                corruption = jpeg_corruption(data, warning)
                width, height = img.size
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    except UnidentifiedImageError:
        return ImageCheck(False, "not an image (unrecognised format)")
    except Exception as exc:  # Pillow's plugins raise many types on hostile input
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated", ...).
        reason = f"truncated or corrupt image data: {exc}"
        return ImageCheck.of(header, reason) if header else ImageCheck(False, reason)
    if corruption is not None:
        return ImageCheck.of(header, f"truncated or corrupt image data: {corruption}")
    return ImageCheck.of(header)


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


def check_label_config(path: Path) -> ImageCheck:
    """A ``label_config.xml`` under the raw prefix is the labelling config of the Label
    Studio exports in its folder: it must be UTF-8 and parse as one
    (:func:`~imageml_core.annotations.config.label_config_problem`)."""
    from imageml_core.annotations.config import label_config_problem

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return ImageCheck(False, f"labelling config is not UTF-8 text: {exc}")
    problem = label_config_problem(text)
    return ImageCheck(problem is None, problem, format="label_studio_config")


def verification_policy_hash(max_image_pixels: int) -> str:
    """A 12-hex digest of everything that decides whether an object passes ingest (the
    bomb limit, the accepted formats and modes): the ``raw_images`` asset's code version,
    so a change shows in Dagster as stale partitions."""
    doc = {
        # The rules themselves, by name: sizes in the displayed frame, damaged JPEG scan
        # data is corruption (imageml_core.imaging).
        "rules": ["displayed-frame", "jpeg-corruption", "jpeg-header-padding-recheck"],
        "decode_rules": DECODE_RULES_VERSION,
        "max_image_pixels": max_image_pixels,
        "formats": sorted(SUPPORTED_FORMATS),
        "modes": sorted(SUPPORTED_MODES),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
