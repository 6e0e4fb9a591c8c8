"""The pipeline's own annotation record: one object in an image, in pixels.

Every stage carries annotations as :class:`Region` values between the converters (COCO and
Label Studio, :mod:`imageml_core.annotations`) and the manifest documents. Coordinates are
pixels of the image the region belongs to, origin at the top-left corner, x to the right,
y down; a box is COCO's ``[x, y, width, height]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Decimals kept when a region is written to a document: 1/1000 px is far below any
#: annotation tool's precision, and a fixed rounding keeps reruns byte-identical.
DECIMALS = 3


@dataclass(frozen=True)
class Region:
    """One annotated object.

    ``bbox`` is ``(x, y, width, height)`` in pixels; ``polygon`` a flat
    ``(x1, y1, x2, y2, ...)`` in pixels or empty; ``keypoints`` ``(x, y)`` pixel pairs;
    ``source_id`` the id the object had in its source file (COCO annotation id, Label
    Studio region id), or empty.
    """

    label: str
    bbox: tuple[float, float, float, float]
    polygon: tuple[float, ...] = ()
    keypoints: tuple[tuple[float, float], ...] = ()
    source_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The region as a JSON object, coordinates rounded to :data:`DECIMALS`; empty
        optional fields are left out."""
        out: dict[str, Any] = {"label": self.label, "bbox": [round(v, DECIMALS) for v in self.bbox]}
        if self.polygon:
            out["polygon"] = [round(v, DECIMALS) for v in self.polygon]
        if self.keypoints:
            out["keypoints"] = [[round(x, DECIMALS), round(y, DECIMALS)] for x, y in self.keypoints]
        if self.source_id:
            out["source_id"] = self.source_id
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Region:
        """The inverse of :meth:`to_json`. Raises ``KeyError``/``TypeError``/``ValueError``
        on a malformed object (callers wrap it in their document's error)."""
        x, y, w, h = (float(v) for v in doc["bbox"])
        return cls(
            label=str(doc["label"]),
            bbox=(x, y, w, h),
            polygon=tuple(float(v) for v in doc.get("polygon") or ()),
            keypoints=tuple((float(p[0]), float(p[1])) for p in doc.get("keypoints") or ()),
            source_id=str(doc.get("source_id") or ""),
        )


def regions_to_json(regions: Sequence[Region]) -> list[dict[str, Any]]:
    """:meth:`Region.to_json` of each region, order kept."""
    return [r.to_json() for r in regions]


def regions_from_json(docs: Sequence[Mapping[str, Any]]) -> tuple[Region, ...]:
    """:meth:`Region.from_json` of each object, order kept."""
    return tuple(Region.from_json(d) for d in docs)
