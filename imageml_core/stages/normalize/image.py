"""Stage 2 inner loop: one source image -> every size variant (plain Python, no Dagster).

Normalization = EXIF orientation applied, colour converted to 8-bit RGB, resized, encoded.
Colour rule (general path): alpha is composited onto ``alpha_background`` (white by
default); palette, grayscale and 1-bit images are expanded to RGB; CMYK is converted with
Pillow's conversion (no ICC profile); 16-bit images keep their top 8 bits.

Fast path (JPEG): the source is decoded once, with libjpeg-turbo (simplejpeg) at the
largest DCT reduction (1/2, 1/4, 1/8) that still covers the largest variant, and the EXIF
orientation applied to that reduced decode; variants are then produced in a cascade,
largest first, each with one bilinear step from the smallest image already made that covers
it (see :func:`_cascade_source`). Every intermediate array
lives in a per-thread scratch buffer reused across images: fresh 9 MB arrays cost ~10 ms
of page faults per image here, a fifth of the whole budget. Everything else (and any JPEG
libjpeg-turbo rejects) takes the general path: Pillow decode at full size, then the same
resizing.

Geometry: ``x' = x * sx + dx`` maps source pixels (after EXIF rotation) to output pixels;
boxes and polygons in annotations are rescaled with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from imageml_core.imaging import (
    DECODE_RULES_VERSION,
    FAST_JPEG_MODES,
    ORIENT_OPS,
    read_header,
    to_rgb8,
    upright,
)
from imageml_core.sizes import (
    CHROMA_SUBSAMPLINGS,
    FIT_POLICIES,
    JPEG_QUALITY_MAX,
    JPEG_QUALITY_MIN,
    SizeVariant,
)

cv2.setNumThreads(1)  # one image per process; parallelism comes from the process pool

# Output chroma subsampling: 4:2:0 is what cameras and most datasets use (smallest files);
# 4:4:4 keeps colour edges (measured on the benchmark's saturated edges: worst RGB PSNR
# 36.0 dB instead of 32.7, ~10% slower per image, ~45% more bytes; perf/normalize/bench_inner_loop.py).
_SAMPLING_FACTORS = {
    "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
}
assert set(_SAMPLING_FACTORS) == set(CHROMA_SUBSAMPLINGS)


class _Scratch(threading.local):
    """Per-thread reusable arrays, one per role (decode, pyramid level, variant)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, role: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self.arrays.get(role)
        if buf is None or buf.size < size:
            buf = self.arrays[role] = np.empty(size, np.uint8)
        return buf[:size].reshape(shape)


_scratch = _Scratch()


@dataclass(frozen=True)
class NormalizePolicy:
    """Everything that affects output bytes. ``quality`` is JPEG quality 1-100."""

    variants: tuple[SizeVariant, ...]
    fit: str = "letterbox"
    pad_rgb: tuple[int, int, int] = (0, 0, 0)
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    quality: int = 90
    chroma_subsampling: str = "420"
    fast_path: bool = True

    def __post_init__(self) -> None:
        if self.fit not in FIT_POLICIES:
            raise ValueError(
                f"fixed-size policy must be one of {', '.join(FIT_POLICIES)}, got {self.fit!r}"
            )
        if not JPEG_QUALITY_MIN <= self.quality <= JPEG_QUALITY_MAX:
            raise ValueError(
                f"JPEG quality must be {JPEG_QUALITY_MIN}-{JPEG_QUALITY_MAX}, got {self.quality}"
            )
        if self.chroma_subsampling not in CHROMA_SUBSAMPLINGS:
            raise ValueError(
                f"chroma subsampling must be one of {', '.join(CHROMA_SUBSAMPLINGS)}, "
                f"got {self.chroma_subsampling!r}"
            )

    def variant_hash(self, variant: SizeVariant) -> str:
        """``normalization_policy_hash`` of one variant: changes when anything that affects
        that variant's bytes changes (settings, library versions)."""
        doc = {
            "variant": [variant.name, variant.kind, variant.width, variant.height],
            "fit": self.fit if variant.kind == "fixed" else None,
            "pad": list(self.pad_rgb)
            if variant.kind == "fixed" and self.fit == "letterbox"
            else None,
            "alpha_background": list(self.alpha_background),
            "quality": self.quality,
            "chroma_subsampling": self.chroma_subsampling,
            "format": "jpeg",
            "fast_path": self.fast_path,
            # The libraries and resampling scheme that make the bytes: a change of either
            # gives new outputs under a new hash, never an overwrite of the old ones.
            "opencv": cv2.__version__,
            "simplejpeg": simplejpeg.__version__,
            "resampler": "cascade-v1",
            "decode_rules": DECODE_RULES_VERSION,
            # Output keys (manifest.keys.normalized_image_uri): non-JPEG sources moved
            # under _converted/, so outputs of the old layout never share a hash folder.
            "layout": 2,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class VariantImage:
    """One size variant of a source: JPEG bytes, size in pixels, and the geometry
    ``(sx, sy, dx, dy)`` mapping source pixels (after EXIF rotation) to its pixels."""

    name: str
    data: bytes  # encoded JPEG
    width: int
    height: int
    geometry: tuple[float, float, float, float]  # sx, sy, dx, dy (source px -> output px)


@dataclass(frozen=True)
class Normalized:
    """Every variant of one source, in policy order. Source size in pixels after EXIF
    rotation; ``path`` is the decode path (fast or general), ``reduction`` the DCT scale
    divisor the source was decoded at (1 on the general path)."""

    source_width: int  # after EXIF rotation
    source_height: int
    path: str  # "fast" or "general"
    reduction: int
    variants: tuple[VariantImage, ...]


def _needed_scale(variant: SizeVariant, src_w: int, src_h: int, fit: str) -> float:
    """The largest source->output scale factor this variant uses."""
    sx, sy, _, _ = variant.scale_geometry(src_w, src_h, fit)
    return max(sx, sy)


def _decode_reduced(data: bytes, stored_w: int, stored_h: int, reduction: int) -> np.ndarray:
    """libjpeg-turbo decode at exactly 1/``reduction`` scale (sizes round up, as libjpeg's
    do), into the scratch buffer. Raises ValueError on data libjpeg-turbo rejects or warns
    about (strict), so such files take the general path."""
    w, h = -(-stored_w // reduction), -(-stored_h // reduction)
    return simplejpeg.decode_jpeg(
        data,
        colorspace="BGR",
        min_factor=reduction,
        min_width=w,
        min_height=h,
        buffer=_scratch.get("decode", (h, w, 3)),
        strict=True,
    )


def _decode(
    path: Path, data: bytes, policy: NormalizePolicy
) -> tuple[np.ndarray, int, int, str, int]:
    """Pixels (BGR uint8, displayed frame), their size, decode path, reduction factor.

    Orientation and colour follow :mod:`imageml_core.imaging` on both paths: the fast path
    applies the JPEG's EXIF orientation to the reduced decode itself (JPEG is never
    oriented by its reader), the general path is the shared decoder."""
    with Image.open(io.BytesIO(data)) as probe:
        header = read_header(probe)
        src_w, src_h = header.width, header.height
        if policy.fast_path and header.format in ("JPEG", "MPO") and probe.mode in FAST_JPEG_MODES:
            need = max(_needed_scale(v, src_w, src_h, policy.fit) for v in policy.variants)
            reduction = 1
            for r in (8, 4, 2):
                # ceil: libjpeg rounds reduced sizes up
                if -(-src_w // r) >= src_w * need and -(-src_h // r) >= src_h * need:
                    reduction = r
                    break
            try:
                pixels = _decode_reduced(data, *probe.size, reduction)
            except ValueError:
                pass  # e.g. a recoverable corruption warning: Pillow decides below
            else:
                if header.orientation in ORIENT_OPS:
                    pixels = ORIENT_OPS[header.orientation](pixels)
                return pixels, src_w, src_h, "fast", reduction
        # General path: the shared decoder, for everything ingest accepts.
        rgb = to_rgb8(upright(probe, header), policy.alpha_background)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), rgb.shape[1], rgb.shape[0], "general", 1


def _fit(
    content: np.ndarray, variant: SizeVariant, out_w: int, out_h: int, policy: NormalizePolicy
) -> np.ndarray:
    """Place resized content into the output canvas (fixed sizes: letterbox or crop)."""
    ch, cw = content.shape[:2]
    if variant.kind == "cap" or (cw == out_w and ch == out_h):
        return content
    if policy.fit == "letterbox":
        canvas = _scratch.get(f"canvas:{variant.name}", (out_h, out_w, 3))
        canvas[:] = policy.pad_rgb[::-1]
        y0, x0 = (out_h - ch) // 2, (out_w - cw) // 2
        canvas[y0 : y0 + ch, x0 : x0 + cw] = content
        return canvas
    y0, x0 = (ch - out_h) // 2, (cw - out_w) // 2
    return content[y0 : y0 + out_h, x0 : x0 + out_w]


_MAX_BILINEAR_RATIO = 2.5


def _cascade_source(sources: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """What to resample a ``width`` x ``height`` variant from: the smallest image made so far
    (the decode, a 2x halving of it, or a larger variant's content) that covers the target.

    Variants run largest first, so this is a cascade: each one reads the previous, smaller
    image instead of the full decode. Bilinear aliases past ~2.5x, so when the nearest
    source is that much larger it is first halved (INTER_AREA at exactly 2x is a cheap 2x2
    box filter). Measured on 12 MP JPEGs to 1440x1080/960x720/800x600 (perf/
    bench_normalize.py): before encoding, every variant stays >= 38 dB RGB against a
    full-decode Lanczos reference, and resizing costs ~10 ms per image instead of ~17 ms
    when every variant reads the decode.
    """
    covering = [a for a in sources if a.shape[1] >= width and a.shape[0] >= height]
    if not covering:
        return max(sources, key=lambda a: a.shape[0] * a.shape[1])  # an upscale: from the most
    source = min(covering, key=lambda a: a.shape[0] * a.shape[1])
    while True:
        h, w = source.shape[:2]
        if min(w / width, h / height) < _MAX_BILINEAR_RATIO or w // 2 < width or h // 2 < height:
            return source
        # Keyed by position, not size: the set of buffers stays bounded across images.
        dst = _scratch.get(f"half:{len(sources)}", (h // 2, w // 2, 3))
        source = cv2.resize(source, (w // 2, h // 2), dst=dst, interpolation=cv2.INTER_AREA)
        sources.append(source)


def _interpolation(ratio_x: float, ratio_y: float) -> int:
    """Bilinear for downscales (the cascade keeps them under 2.5x), bicubic to enlarge."""
    return cv2.INTER_CUBIC if min(ratio_x, ratio_y) < 1.0 else cv2.INTER_LINEAR


def normalize_image(path: Path, policy: NormalizePolicy) -> Normalized:
    """Every variant of one source, encoded as JPEG."""
    data = path.read_bytes()
    pixels, src_w, src_h, decode_path, reduction = _decode(path, data, policy)
    plans = []
    for v in policy.variants:
        out_w, out_h = v.target_size(src_w, src_h)
        sx, sy, dx, dy = v.scale_geometry(src_w, src_h, policy.fit)
        content_w, content_h = max(1, round(src_w * sx)), max(1, round(src_h * sy))
        # Integer placement must match what _fit does, so annotations land on the pixels.
        if v.kind == "fixed":
            dx = (
                float((out_w - content_w) // 2)
                if policy.fit == "letterbox"
                else -float((content_w - out_w) // 2)
            )
            dy = (
                float((out_h - content_h) // 2)
                if policy.fit == "letterbox"
                else -float((content_h - out_h) // 2)
            )
        plans.append(
            (v, out_w, out_h, content_w, content_h, (content_w / src_w, content_h / src_h, dx, dy))
        )
    results: dict[str, VariantImage] = {}
    sources = [pixels]
    encode = [
        cv2.IMWRITE_JPEG_QUALITY,
        policy.quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        _SAMPLING_FACTORS[policy.chroma_subsampling],
    ]
    for v, out_w, out_h, cw, ch, geometry in sorted(plans, key=lambda p: -(p[3] * p[4])):
        source = _cascade_source(sources, cw, ch)
        h, w = source.shape[:2]
        interp = _interpolation(w / cw, h / ch)
        content = (
            source
            if (w, h) == (cw, ch)
            else cv2.resize(
                source,
                (cw, ch),
                dst=_scratch.get(f"variant:{v.name}", (ch, cw, 3)),
                interpolation=interp,
            )
        )
        sources.append(content)
        ok, buf = cv2.imencode(".jpg", _fit(content, v, out_w, out_h, policy), encode)
        if not ok:
            raise ValueError(f"JPEG encoding failed for {path} variant {v.name}")
        results[v.name] = VariantImage(v.name, buf.tobytes(), out_w, out_h, geometry)
    ordered = tuple(results[v.name] for v in policy.variants)
    return Normalized(src_w, src_h, decode_path, reduction, ordered)


def scale_region(
    bbox: tuple[float, float, float, float],
    geometry: tuple[float, float, float, float],
    out_w: int,
    out_h: int,
) -> tuple[float, float, float, float] | None:
    """A COCO box ``[x, y, w, h]`` (source px) in output pixels, clipped; None if it left the image."""
    sx, sy, dx, dy = geometry
    x0, y0 = bbox[0] * sx + dx, bbox[1] * sy + dy
    x1, y1 = (bbox[0] + bbox[2]) * sx + dx, (bbox[1] + bbox[3]) * sy + dy
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(out_w), x1), min(float(out_h), y1)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def scale_polygon(
    polygon: tuple[float, ...], geometry: tuple[float, float, float, float], out_w: int, out_h: int
) -> tuple[float, ...]:
    """A flat ``(x1, y1, x2, y2, ...)`` polygon in source pixels mapped into output pixels by
    ``geometry`` (``x' = x * sx + dx``), each point clamped to the ``out_w`` x ``out_h`` image."""
    sx, sy, dx, dy = geometry
    pts = []
    for x, y in zip(polygon[0::2], polygon[1::2], strict=True):
        pts += [min(max(x * sx + dx, 0.0), float(out_w)), min(max(y * sy + dy, 0.0), float(out_h))]
    return tuple(pts)
