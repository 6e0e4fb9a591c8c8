"""Augmentation pipelines: YAML files of Albumentations transforms, loaded by name or path.

A pipeline file (see ``pipelines/``) has ``transforms`` (a list of ``Name: {args}``
mappings, each an Albumentations transform), ``copies`` (augmented copies per image),
``bbox`` (``min_visibility``: fraction of a box's area that must stay visible;
``min_area_px``: smallest box kept, in square pixels) and ``output`` (JPEG quality).
The config hash covers every setting and library version that changes output bytes, so
copy ``k`` of an image always gets the same random state (:meth:`AugmentPipeline.seed_for`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import yaml

from imageml_core.manifest.keys import augment_tag

PIPELINE_DIR = Path(__file__).parent / "pipelines"


class PipelineConfigError(ValueError):
    """An augmentation pipeline that cannot be loaded; the message names the problem."""


@dataclass(frozen=True)
class AugmentPipeline:
    """A loaded pipeline: ``copies`` per image, JPEG ``quality`` 1-100, the box rule
    (``min_visibility`` fraction, ``min_area_px`` square pixels), the transform specs as
    written, and ``config_hash`` (SHA-256 hex over all of it and the library versions)."""

    name: str
    copies: int
    quality: int
    min_visibility: float
    min_area_px: float
    transforms: tuple[dict[str, Any], ...]
    config_hash: str
    compose: A.Compose = field(compare=False, repr=False)

    @property
    def tag(self) -> str:
        """``<name>-<hash8>``: names this configuration in partition keys and output paths."""
        return augment_tag(self.name, self.config_hash)

    def seed_for(self, content_sha256: str, copy_index: int) -> int:
        """The random state of copy ``copy_index`` of the image with this SHA-256: the
        same image, configuration and copy always get the same seed (32 bits)."""
        digest = hashlib.sha256(
            f"{content_sha256}:{self.config_hash}:{copy_index}".encode()
        ).digest()
        return int.from_bytes(digest[:4], "big")


def available_pipelines() -> list[str]:
    """Names of the built-in pipelines (``pipelines/*.yaml``)."""
    return sorted(p.stem for p in PIPELINE_DIR.glob("*.yaml"))


def load_pipeline(name_or_path: str, *, copies: int | None = None) -> AugmentPipeline:
    """A pipeline by registry name or YAML path; ``copies`` overrides the file's count.

    Raises :class:`PipelineConfigError` naming the file and the problem (unknown name,
    unreadable YAML, a transform Albumentations does not have, bad arguments or limits).
    """
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
    # Everything that changes the outputs goes into the hash, library versions included, and
    # the number of copies: the partition key carries the hash, so more copies must make a
    # new partition (with the same hash the old, smaller one would count as published).
    canonical = json.dumps(
        {
            "copies": n_copies,
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
