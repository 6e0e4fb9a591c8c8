"""Stage 1, augment step: a named Albumentations pipeline applied deterministically.

Pipelines are YAML (see ``augment_pipelines/``): a registry name (``default``, ``light``)
or a path. Geometry moves annotations with the image:

- boxes are COCO ``[x, y, width, height]`` in pixels, top-left origin;
- after each transform boxes are clipped to the image; a box whose visible fraction of its
  original area falls below ``bbox.min_visibility``, or whose clipped area is below
  ``bbox.min_area_px`` square pixels, is dropped (counted per output, never silently);
- polygon vertices and keypoints are ``(x, y)`` pixels; polygon vertices are clipped to
  the image, a polygon left with fewer than 3 distinct vertices is dropped with its box.

Determinism: the random state for copy ``k`` of an image is derived from the image's
SHA-256, the pipeline's config hash and ``k``, so a rerun writes byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import yaml

PIPELINE_DIR = Path(__file__).parent / "augment_pipelines"


class PipelineConfigError(ValueError):
    """An augmentation pipeline that cannot be loaded; the message names the problem."""


@dataclass(frozen=True)
class Region:
    """One annotated object. ``bbox`` is ``[x, y, w, h]`` in pixels; ``polygon`` is a flat
    ``[x1, y1, x2, y2, ...]`` in pixels or empty; ``keypoints`` are ``(x, y)`` pixels."""

    label: str
    bbox: tuple[float, float, float, float]
    polygon: tuple[float, ...] = ()
    keypoints: tuple[tuple[float, float], ...] = ()
    source_id: str = ""


@dataclass(frozen=True)
class AugmentPipeline:
    name: str
    copies: int
    quality: int
    min_visibility: float
    min_area_px: float
    transforms: tuple[dict[str, Any], ...]
    config_hash: str
    compose: A.Compose = field(compare=False, repr=False)

    def seed_for(self, content_sha256: str, copy_index: int) -> int:
        digest = hashlib.sha256(
            f"{content_sha256}:{self.config_hash}:{copy_index}".encode()
        ).digest()
        return int.from_bytes(digest[:4], "big")


def available_pipelines() -> list[str]:
    return sorted(p.stem for p in PIPELINE_DIR.glob("*.yaml"))


def load_pipeline(name_or_path: str, *, copies: int | None = None) -> AugmentPipeline:
    """A pipeline by registry name or YAML path; ``copies`` overrides the file's count."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PIPELINE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise PipelineConfigError(
                f"unknown augmentation pipeline {name_or_path!r}; built-in: {', '.join(available_pipelines())} "
                "(or give a path to a YAML file)"
            )
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineConfigError(f"cannot read augmentation pipeline {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("transforms"), list):
        raise PipelineConfigError(f"{path}: expected a mapping with a 'transforms' list")
    steps: list[A.BasicTransform] = []
    specs: list[dict[str, Any]] = []
    for i, item in enumerate(doc["transforms"]):
        if not isinstance(item, dict) or len(item) != 1:
            raise PipelineConfigError(
                f"{path}: transforms[{i}] must be one 'Name: {{args}}' mapping"
            )
        ((tname, kwargs),) = item.items()
        cls = getattr(A, str(tname), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise PipelineConfigError(
                f"{path}: transforms[{i}]: {tname!r} is not an Albumentations transform"
            )
        try:
            steps.append(cls(**(kwargs or {})))
        except (TypeError, ValueError) as exc:
            raise PipelineConfigError(f"{path}: transforms[{i}] {tname}: {exc}") from exc
        specs.append({str(tname): kwargs or {}})
    bbox = doc.get("bbox") or {}
    output = doc.get("output") or {}
    quality = int(output.get("quality", 92))
    if output.get("format", "jpeg") != "jpeg" or not 1 <= quality <= 100:
        raise PipelineConfigError(f"{path}: output must be format jpeg with quality 1-100")
    n_copies = int(copies if copies is not None else doc.get("copies", 1))
    if n_copies < 1:
        raise PipelineConfigError(f"{path}: copies must be at least 1, got {n_copies}")
    min_visibility = float(bbox.get("min_visibility", 0.3))
    min_area = float(bbox.get("min_area_px", 16.0))
    # Everything that changes output bytes goes into the hash, library versions included.
    canonical = json.dumps(
        {
            "transforms": specs,
            "quality": quality,
            "bbox": [min_visibility, min_area],
            "albumentations": A.__version__,
            "opencv": cv2.__version__,
        },
        sort_keys=True,
    )
    compose = A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="coco",
            label_fields=["region_index"],
            min_visibility=min_visibility,
            min_area=min_area,
            clip=True,
        ),
        keypoint_params=A.KeypointParams(
            format="xy", label_fields=["point_owner"], remove_invisible=False
        ),
        seed=0,
    )
    return AugmentPipeline(
        name=str(doc.get("name") or path.stem),
        copies=n_copies,
        quality=quality,
        min_visibility=min_visibility,
        min_area_px=min_area,
        transforms=tuple(specs),
        config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        compose=compose,
    )


@dataclass(frozen=True)
class Augmented:
    image: np.ndarray  # RGB, uint8, HxWx3
    regions: tuple[Region, ...]
    dropped: int


def _clip_polygon(points: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    points = np.clip(points, [0, 0], [width, height])
    unique = {(round(float(x), 3), round(float(y), 3)) for x, y in points}
    if len(unique) < 3:
        return ()
    return tuple(float(v) for v in points.reshape(-1))


def augment_image(
    image: np.ndarray, regions: tuple[Region, ...], pipeline: AugmentPipeline, seed: int
) -> Augmented:
    """One augmented copy of ``image`` (RGB uint8) and its regions, for a given seed."""
    bboxes = []
    index = []
    points: list[tuple[float, float]] = []
    owners: list[tuple[int, str]] = []
    h, w = image.shape[:2]
    for i, r in enumerate(regions):
        x, y, bw, bh = r.bbox
        # Clip to the image first: COCO boxes may poke out by rounding; Albumentations refuses those.
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue
        bboxes.append((x0, y0, x1 - x0, y1 - y0))
        index.append(i)
        for px, py in zip(r.polygon[0::2], r.polygon[1::2], strict=True):
            points.append((px, py))
            owners.append((i, "poly"))
        for kp in r.keypoints:
            points.append(kp)
            owners.append((i, "kp"))
    pipeline.compose.set_random_seed(seed)
    out = pipeline.compose(
        image=image,
        bboxes=np.asarray(bboxes, dtype=np.float32).reshape(-1, 4),
        region_index=index,
        keypoints=np.asarray(points, dtype=np.float32).reshape(-1, 2),
        point_owner=list(range(len(points))),
    )
    new_image = out["image"]
    nh, nw = new_image.shape[:2]
    moved_points = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
    kept: list[Region] = []
    for box, idx in zip(out["bboxes"], out["region_index"], strict=True):
        src = regions[int(idx)]
        poly_pts = np.array(
            [moved_points[j] for j, (o, kind) in enumerate(owners) if o == idx and kind == "poly"]
        )
        polygon = _clip_polygon(poly_pts, nw, nh) if len(poly_pts) else ()
        if src.polygon and not polygon:
            continue
        kps = tuple(
            (float(moved_points[j][0]), float(moved_points[j][1]))
            for j, (o, kind) in enumerate(owners)
            if o == idx and kind == "kp"
        )
        kept.append(
            Region(src.label, tuple(float(v) for v in box), polygon, kps, src.source_id)  # type: ignore[arg-type]
        )
    return Augmented(new_image, tuple(kept), dropped=len(regions) - len(kept))


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """Encode RGB pixels; libjpeg with fixed settings is deterministic for identical input."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_rgb(path: Path) -> np.ndarray:
    """Decode with EXIF orientation applied (cv2 does by default), as RGB uint8."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
