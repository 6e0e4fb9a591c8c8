"""Shared pieces of the annotation converters: the report, format detection, the offline guard.

Coordinate conventions used throughout :mod:`imageml_core.annotations`:

* Label Studio: percent (0-100) of the *original* image size (``original_width`` /
  ``original_height`` in pixels), origin at the top-left corner; rectangles are
  ``x, y, width, height``, polygons are ``[[x, y], ...]``.
* COCO: pixels, origin at the top-left corner; ``bbox`` is ``[x, y, width, height]`` and
  polygon ``segmentation`` is ``[[x1, y1, x2, y2, ...], ...]``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Literal

AnnotationFormat = Literal["label_studio", "coco"]

#: Environment variables the SDK reads to resolve and download task media (or that change
#: its output). They are removed while a converter runs; see :func:`sdk_offline`.
SDK_ENV_VARS = (
    "LABEL_STUDIO_URL",
    "LABEL_STUDIO_HOST",
    "LABEL_STUDIO_API_KEY",
    "LABEL_STUDIO_ACCESS_TOKEN",
    "LABEL_STUDIO_FORCE_ANNOTATOR_EXPORT",
)

# os.environ is process-wide: conversions in several threads must not interleave.
_ENV_LOCK = threading.RLock()


def converter_version() -> str:
    """The installed ``label-studio-sdk`` version (the converter that did the work)."""
    return metadata.version("label-studio-sdk")


@dataclass
class ConversionReport:
    """What a conversion did, for the annotation manifest.

    ``annotation_format`` is the *source* format (``"label_studio"`` or ``"coco"``);
    ``converted`` counts what came out; ``received`` counts what went in; every input item
    that did not come out is in ``skipped`` (``{"level": "task"|"annotation"|"result"|
    "image", ..., "reason": str}``). ``choices`` records which Label Studio annotation was
    used for a task that offered more than one; ``merged`` lists rectangles folded into the
    polygon of the same region; ``adjusted`` lists items converted with a change worth
    knowing (size supplied, box clipped, multi-part polygon reduced to its box, ...).
    ``label_config`` is the labelling config the produced Label Studio tasks validate
    against (COCO -> Label Studio only).
    """

    annotation_format: AnnotationFormat
    target_format: AnnotationFormat
    converter: str = "label-studio-sdk"
    converter_version: str = field(default_factory=converter_version)
    conversion_parameters: dict[str, Any] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    converted: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    choices: list[dict[str, Any]] = field(default_factory=list)
    merged: list[dict[str, Any]] = field(default_factory=list)
    adjusted: list[dict[str, Any]] = field(default_factory=list)
    label_config: str | None = None

    def skip(self, level: str, reason: str, **ids: Any) -> None:
        """Record one input item that is not in the output, and why."""
        self.skipped.append({"level": level, **ids, "reason": reason})

    def skipped_count(self, level: str) -> int:
        """How many skipped items are at ``level`` (task, annotation, result or image)."""
        return sum(1 for s in self.skipped if s["level"] == level)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what the manifest stores)."""
        return asdict(self)


@contextmanager
def sdk_offline() -> Iterator[None]:
    """Run the Label Studio SDK converters with the media-download variables unset.

    With ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` (or their aliases) set, the SDK
    tries to download every task's image. Inside this block they are removed; on exit the
    previous values are restored exactly (also on error). Holds a process-wide lock, since
    the environment is shared by all threads.
    """
    with _ENV_LOCK:
        saved = {k: os.environ.pop(k) for k in SDK_ENV_VARS if k in os.environ}
        try:
            yield
        finally:
            for key in SDK_ENV_VARS:
                os.environ.pop(key, None)
            os.environ.update(saved)


def _looks_like_ls_task(item: Any) -> bool:
    return isinstance(item, Mapping) and isinstance(item.get("data"), Mapping)


def _looks_like_coco_result(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and "image_id" in item
        and "category_id" in item
        and ("bbox" in item or "segmentation" in item)
    )


def detect_format(doc: Any) -> AnnotationFormat:
    """``"label_studio"`` for a Label Studio export, ``"coco"`` for a COCO document.

    A Label Studio export is a JSON list of tasks (each a dict with a ``data`` dict; an
    empty list is an empty export); a single task dict is accepted too. COCO is a dict with
    ``images`` and ``annotations`` lists (``categories`` is expected; COCO-Annotator
    quirks such as string ``iscrowd`` are handled by the converter). Anything else, including
    a COCO *results* list (detections without images and categories), raises ``ValueError``.
    """
    if isinstance(doc, list):
        if all(_looks_like_ls_task(t) for t in doc):
            return "label_studio"
        if doc and all(_looks_like_coco_result(r) for r in doc):
            raise ValueError(
                "a COCO results list (detections with image_id/category_id/bbox) is not an "
                "annotation document: it needs the ground-truth images and categories"
            )
        bad = next(i for i, t in enumerate(doc) if not _looks_like_ls_task(t))
        raise ValueError(
            f"a JSON list but item {bad} is not a Label Studio task (a dict with a 'data' dict)"
        )
    if isinstance(doc, Mapping):
        if isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list):
            return "coco"
        if _looks_like_ls_task(doc):
            return "label_studio"
        raise ValueError(
            "a JSON object without 'images' and 'annotations' lists (COCO) and without a "
            f"'data' dict (Label Studio task); keys: {sorted(map(str, doc))[:10]}"
        )
    raise ValueError(
        f"expected a JSON list (Label Studio) or object (COCO), got {type(doc).__name__}"
    )


def is_crowd(value: Any) -> bool:
    """COCO ``iscrowd`` as a bool; accepts COCO-Annotator strings (``"false"``, ``"1"``)."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)
