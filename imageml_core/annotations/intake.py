"""Matching annotation files under the raw prefix to the images they describe.

Convention (README "Annotations"): a ``.json`` object under the raw prefix is an
annotation file. Its format is detected (Label Studio export = a list of tasks; COCO = a
dict with ``images`` and ``annotations``). It applies to images in *its own folder*,
matched by base file name (Label Studio's upload prefix ``<8 hex>-`` is ignored when the
plain name does not match). Names that match no ingested object, and images named by more
than one record, are reported; for the latter the record from the file that sorts first
wins, so the choice is stable. Label Studio exports are converted to COCO with the Label
Studio SDK (see :mod:`imageml_core.annotations`); a ``label_config.xml`` in the same folder
is used as the labelling config, otherwise one is inferred from the tasks' results.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imageml_core.annotations.common import detect_format
from imageml_core.annotations.config import infer_label_config
from imageml_core.annotations.ls_to_coco import ls_to_coco
from imageml_core.annotations.regions import Region

_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


@dataclass(frozen=True)
class ImageRef:
    """An ingested image: its URI and size in pixels of the displayed frame (EXIF orientation
    applied: the frame annotation coordinates are read in)."""

    uri: str
    width: int
    height: int


@dataclass
class IntakeReport:
    """What annotation intake found (stored in the augment manifest).

    ``files``: one entry per annotation file, with its format and conversion, or ``error``
    when it is not JSON of a known format; ``unmatched_names``: names matching no ingested
    image of the file's folder; ``named_twice``: images a later file named again (the file
    that sorts first wins); ``not_converted``: Label Studio items the conversion skipped."""

    files: list[dict[str, Any]] = field(default_factory=list)
    unmatched_names: list[dict[str, str]] = field(default_factory=list)
    named_twice: list[dict[str, Any]] = field(default_factory=list)
    not_converted: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The four lists as a JSON-ready dict."""
        return {
            "files": self.files,
            "unmatched_names": self.unmatched_names,
            "named_twice": self.named_twice,
            "not_converted": self.not_converted,
        }


def folder_of(uri: str) -> str:
    """The URI up to its last ``/`` (no trailing slash): the folder an object is in."""
    return uri.rsplit("/", 1)[0]


def base_name(ref: str) -> str:
    """The file name in a path, URI or URL: after the last ``/`` or ``\\``, query string
    removed."""
    return ref.replace("\\", "/").rsplit("/", 1)[-1].split("?", 1)[0]


def regions_from_coco(doc: Mapping[str, Any]) -> dict[str, list[Region]]:
    """COCO (pixels, ``[x, y, w, h]``) -> regions per image *file name*.

    Polygon segmentations are kept; RLE masks keep only their box (reported by the
    converter). ``iscrowd`` given as strings (COCO-Annotator) is accepted.
    """
    categories = {c["id"]: str(c["name"]) for c in doc.get("categories", [])}
    names = {img["id"]: str(img.get("file_name", "")) for img in doc.get("images", [])}
    out: dict[str, list[Region]] = defaultdict(list)
    for ann in sorted(
        doc.get("annotations", []), key=lambda a: (str(a.get("image_id")), str(a.get("id")))
    ):
        if ann.get("image_id") not in names or "bbox" not in ann:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        seg = ann.get("segmentation")
        polygon: tuple[float, ...] = ()
        if isinstance(seg, list) and seg and isinstance(seg[0], list) and len(seg[0]) >= 6:
            polygon = tuple(float(v) for v in seg[0])
        label = categories.get(ann.get("category_id"), str(ann.get("category_id")))
        out[names[ann["image_id"]]].append(
            Region(label, (x, y, w, h), polygon, (), str(ann.get("id")))
        )
    return dict(out)


def collect_annotations(
    images: Sequence[ImageRef],
    annotation_files: Sequence[tuple[str, Path]],
    *,
    folder_images: Mapping[str, Sequence[ImageRef]],
    label_configs: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[Region]], IntakeReport]:
    """Regions for each of ``images`` (by URI) from the annotation files of their folders.

    ``folder_images`` lists every ingested image per folder (all batches), so a name that
    matches an image of another batch is not reported as unmatched.
    """

    report = IntakeReport()
    wanted = {img.uri for img in images}
    by_uri: dict[str, list[Region]] = {}
    claimed: dict[str, str] = {}
    for file_uri, path in sorted(annotation_files):
        folder = folder_of(file_uri)
        siblings = {base_name(i.uri): i for i in folder_images.get(folder, [])}
        try:
            doc = json.loads(path.read_bytes())
            fmt = detect_format(doc)
        except ValueError as exc:
            report.files.append({"uri": file_uri, "error": str(exc)})
            continue
        entry: dict[str, Any] = {"uri": file_uri, "annotation_format": fmt}
        if fmt == "label_studio":
            config = (label_configs or {}).get(folder) or infer_label_config(doc)
            sizes = {}
            for task in doc:
                ref = str((task.get("data") or {}).get("image", ""))
                match = _match(base_name(ref), siblings)
                if match is not None:
                    sizes[ref] = (match.width, match.height)
            coco, conv = ls_to_coco(doc, config, image_sizes=sizes)
            entry.update(
                converter_version=conv.converter_version,
                conversion_parameters=conv.conversion_parameters,
                converted=conv.converted,
            )
            for skipped in conv.skipped:
                report.not_converted.append({"file": file_uri, **skipped})
        else:
            coco = doc
        per_name = regions_from_coco(coco)
        for name, regions in sorted(per_name.items()):
            match = _match(base_name(name), siblings)
            if match is None:
                report.unmatched_names.append({"file": file_uri, "name": name})
                continue
            if match.uri in claimed:
                report.named_twice.append(
                    {"image_uri": match.uri, "files": [claimed[match.uri], file_uri]}
                )
                continue
            claimed[match.uri] = file_uri
            if match.uri in wanted:
                by_uri[match.uri] = regions
        report.files.append(entry)
    return by_uri, report


def _match(name: str, siblings: Mapping[str, ImageRef]) -> ImageRef | None:
    if name in siblings:
        return siblings[name]
    stripped = _LS_UPLOAD_PREFIX.sub("", name)
    return siblings.get(stripped)
