"""Augmentation pipelines: YAML files of Albumentations transforms, loaded by name or path.

A pipeline file (see ``pipelines/``) has ``transforms`` (a list of ``Name: {args}``
mappings, each an Albumentations transform), ``copies`` (augmented copies per image),
``bbox`` (``min_visibility``: fraction of a box's area that must stay visible;
``min_area_px``: smallest box kept, in square pixels) and ``output`` (JPEG quality).
The config hash covers every setting and library version that changes the outputs, so
copy ``k`` of an image always gets the same random state (:meth:`PipelineSpec.seed_for`).

Two levels, because importing Albumentations costs ~8 s here (it imports torch when torch
is installed): :func:`read_pipeline` reads and hashes the file without it (what the code
location, the sensors and the CLI need: the tag), :func:`load_pipeline` also builds and
checks the transforms (what the augment step needs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import yaml

from imageml_core.imaging import DECODE_RULES_VERSION
from imageml_core.manifest.keys import augment_tag

PIPELINE_DIR = Path(__file__).parent / "pipelines"


class PipelineConfigError(ValueError):
    """An augmentation pipeline that cannot be loaded; the message names the problem."""


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline as its file states it: ``copies`` per image, JPEG ``quality`` 1-100, the
    box rule (``min_visibility`` fraction, ``min_area_px`` square pixels), the transform
    specs as written, and ``config_hash`` (SHA-256 hex over all of it and the versions of
    Albumentations and OpenCV)."""

    name: str
    path: Path
    copies: int
    quality: int
    min_visibility: float
    min_area_px: float
    transforms: tuple[dict[str, Any], ...]
    config_hash: str

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


@dataclass(frozen=True)
class AugmentPipeline(PipelineSpec):
    """A pipeline ready to run: its spec and the Albumentations ``Compose`` built from it."""

    compose: Any = field(default=None, compare=False, repr=False)


def available_pipelines() -> list[str]:
    """Names of the built-in pipelines (``pipelines/*.yaml``)."""
    return sorted(p.stem for p in PIPELINE_DIR.glob("*.yaml"))


def _pipeline_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix:
        return path
    path = PIPELINE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise PipelineConfigError(
            f"unknown augmentation pipeline {name_or_path!r}; built-in: "
            f"{', '.join(available_pipelines())} (or give a path to a YAML file)"
        )
    return path


def _transform_specs(path: Path, items: list[Any]) -> tuple[dict[str, Any], ...]:
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise PipelineConfigError(
                f"{path}: transforms[{i}] must be one 'Name: {{args}}' mapping"
            )
        ((name, kwargs),) = item.items()
        if kwargs is not None and not isinstance(kwargs, dict):
            raise PipelineConfigError(
                f"{path}: transforms[{i}] {name}: arguments must be a mapping"
            )
        specs.append({str(name): kwargs or {}})
    return tuple(specs)


def read_pipeline(name_or_path: str, *, copies: int | None = None) -> PipelineSpec:
    """A pipeline's spec by registry name or YAML path, without importing Albumentations;
    ``copies`` overrides the file's count.

    Raises :class:`PipelineConfigError` naming the file and the problem (unknown name,
    unreadable YAML, wrong structure or limits). Transform names and arguments are checked
    by :func:`load_pipeline`.
    """
    path = _pipeline_path(name_or_path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineConfigError(f"cannot read augmentation pipeline {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("transforms"), list):
        raise PipelineConfigError(f"{path}: expected a mapping with a 'transforms' list")
    specs = _transform_specs(path, doc["transforms"])
    bbox, output = doc.get("bbox") or {}, doc.get("output") or {}
    try:
        quality = int(output.get("quality", 92))
        n_copies = int(copies if copies is not None else doc.get("copies", 1))
        min_visibility = float(bbox.get("min_visibility", 0.3))
        min_area = float(bbox.get("min_area_px", 16.0))
    except (TypeError, ValueError, AttributeError) as exc:
        raise PipelineConfigError(f"{path}: {exc}") from exc
    if output.get("format", "jpeg") != "jpeg" or not 1 <= quality <= 100:
        raise PipelineConfigError(f"{path}: output must be format jpeg with quality 1-100")
    if n_copies < 1:
        raise PipelineConfigError(f"{path}: copies must be at least 1, got {n_copies}")
    # Everything that changes the outputs goes into the hash, library versions included, and
    # the number of copies: the partition key carries the hash, so more copies must make a
    # new partition (with the same hash the old, smaller one would count as published).
    canonical = json.dumps(
        {
            "copies": n_copies,
            "transforms": specs,
            "quality": quality,
            "bbox": [min_visibility, min_area],
            "albumentations": metadata.version("albumentations"),
            "opencv": cv2.__version__,
            "decode_rules": DECODE_RULES_VERSION,
        },
        sort_keys=True,
    )
    return PipelineSpec(
        name=str(doc.get("name") or path.stem),
        path=path,
        copies=n_copies,
        quality=quality,
        min_visibility=min_visibility,
        min_area_px=min_area,
        transforms=specs,
        config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def load_pipeline(name_or_path: str, *, copies: int | None = None) -> AugmentPipeline:
    """A pipeline ready to run: :func:`read_pipeline` plus its Albumentations ``Compose``
    (boxes in COCO pixels, clipped; keypoints ``(x, y)`` pixels).

    Raises :class:`PipelineConfigError` as :func:`read_pipeline` does, and for a transform
    Albumentations does not have or arguments it refuses.
    """
    import albumentations as A  # ~8 s: only the augment step pays it

    spec = read_pipeline(name_or_path, copies=copies)
    steps = []
    for i, item in enumerate(spec.transforms):
        ((name, kwargs),) = item.items()
        cls = getattr(A, name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise PipelineConfigError(
                f"{spec.path}: transforms[{i}]: {name!r} is not an Albumentations transform"
            )
        try:
            steps.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            raise PipelineConfigError(f"{spec.path}: transforms[{i}] {name}: {exc}") from exc
    compose = A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="coco",
            label_fields=["region_index"],
            min_visibility=spec.min_visibility,
            min_area=spec.min_area_px,
            clip=True,
        ),
        keypoint_params=A.KeypointParams(
            format="xy", label_fields=["point_owner"], remove_invisible=False
        ),
        seed=0,
    )
    return AugmentPipeline(
        **{f: getattr(spec, f) for f in spec.__dataclass_fields__}, compose=compose
    )
