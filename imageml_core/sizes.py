"""Size tokens for stage 2 (``NORMALIZE_SIZES`` / ``--sizes``), e.g. ``1080p,720p,800x600``.

- A named preset (``2160p``, ``1440p``, ``1080p``, ``720p``, ``480p``, ``360p``) is a *cap*:
  the image is scaled to fit inside the preset box (e.g. 1920x1080) keeping its aspect
  ratio, and never upscaled. The box is applied in the image's orientation: a portrait
  photo is capped at 1080x1920, not squeezed into 1920x1080.
- ``WxH`` is a *fixed* size: the output is exactly W x H pixels. How the aspect ratio is
  reconciled is the fixed-size policy: ``letterbox`` (scale to fit, pad with a colour) or
  ``crop`` (scale to cover, centre crop).

All sizes are in pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRESETS: dict[str, tuple[int, int]] = {
    "2160p": (3840, 2160),
    "1440p": (2560, 1440),
    "1080p": (1920, 1080),
    "720p": (1280, 720),
    "480p": (854, 480),
    "360p": (640, 360),
}
MAX_SIDE = 16384  # JPEG's own limit is 65535; past 16k px nothing downstream is sane
_FIXED = re.compile(r"^(\d+)x(\d+)$")
FIT_POLICIES = ("letterbox", "crop")
#: JPEG chroma subsampling of normalized variants (``NORMALIZE_CHROMA``) and the JPEG
#: quality range (``NORMALIZE_QUALITY``): the settings and the normalize policy both check
#: against these, so the rule lives here once.
CHROMA_SUBSAMPLINGS = ("420", "444")
JPEG_QUALITY_MIN, JPEG_QUALITY_MAX = 1, 100


class InvalidSizeToken(ValueError):
    """A size token that cannot be used; the message names it."""


@dataclass(frozen=True)
class SizeVariant:
    """One output variant. ``kind`` is ``cap`` (presets) or ``fixed`` (``WxH``)."""

    name: str
    kind: str
    width: int
    height: int

    def target_size(self, src_w: int, src_h: int) -> tuple[int, int]:
        """Output size in pixels for a ``src_w`` x ``src_h`` source (after EXIF rotation)."""
        if self.kind == "fixed":
            return self.width, self.height
        box_w, box_h = (self.width, self.height) if src_w >= src_h else (self.height, self.width)
        scale = min(box_w / src_w, box_h / src_h, 1.0)
        if scale >= 1.0:
            return src_w, src_h
        return max(1, round(src_w * scale)), max(1, round(src_h * scale))

    def scale_geometry(self, src_w: int, src_h: int, fit: str) -> tuple[float, float, float, float]:
        """``(sx, sy, dx, dy)`` mapping source pixels to output pixels: ``x' = x*sx + dx``."""
        out_w, out_h = self.target_size(src_w, src_h)
        if self.kind == "cap":
            return out_w / src_w, out_h / src_h, 0.0, 0.0
        if fit == "letterbox":
            s = min(out_w / src_w, out_h / src_h)
        else:
            s = max(out_w / src_w, out_h / src_h)
        return s, s, (out_w - src_w * s) / 2, (out_h - src_h * s) / 2


def parse_size_token(token: str) -> SizeVariant:
    """One token (``1080p``, ``800x600``); raises :class:`InvalidSizeToken` naming it."""
    raw = token
    token = token.strip().lower()
    if not token:
        raise InvalidSizeToken("empty size token (two commas in a row, or a trailing comma?)")
    if token in PRESETS:
        w, h = PRESETS[token]
        return SizeVariant(token, "cap", w, h)
    match = _FIXED.match(token)
    if not match:
        raise InvalidSizeToken(
            f"size token {raw!r} is neither a preset ({', '.join(PRESETS)}) nor WxH (e.g. 800x600)"
        )
    w, h = int(match[1]), int(match[2])
    if w == 0 or h == 0:
        raise InvalidSizeToken(f"size token {raw!r}: width and height must be at least 1 pixel")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise InvalidSizeToken(f"size token {raw!r}: sides are limited to {MAX_SIDE} pixels")
    return SizeVariant(f"{w}x{h}", "fixed", w, h)


def parse_sizes(spec: str) -> list[SizeVariant]:
    """Parse a comma-separated list; duplicates (after normalising case) are an error."""
    if not spec or not spec.strip():
        raise InvalidSizeToken(
            "no sizes given: set NORMALIZE_SIZES or --sizes, e.g. 1080p,720p,800x600"
        )
    variants = [parse_size_token(t) for t in spec.split(",")]
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise InvalidSizeToken(f"size token {v.name!r} is listed twice")
        seen.add(v.name)
    return variants
