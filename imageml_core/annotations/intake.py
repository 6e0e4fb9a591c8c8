"""Matching annotation files under the raw prefix to the images they describe.

Convention (README "Annotations"): a ``.json`` object under the raw prefix is an
annotation file. Its format is detected (Label Studio export = a list of tasks; COCO = a
dict with ``images`` and ``annotations``). It applies to images in *its own folder*,
matched by base file name (Label Studio's upload prefix ``<8 hex>-`` is ignored when the
plain name does not match). Names that match no ingested object, and images named by more
than one record, are reported; for the latter the record from the file that sorts first
wins, so the choice is stable. Label Studio exports are converted to COCO with the Label
Studio SDK (see :mod:`imageml_core.annotations`); a ``label_config.xml`` in the same folder
is used as the labelling config (a label a result uses that the config does not declare is
reported, and kept), otherwise one is inferred from the tasks' results.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from imageml_core.annotations.common import detect_format
from imageml_core.annotations.config import config_labels, infer_label_config
from imageml_core.annotations.ls_to_coco import ls_to_coco
from imageml_core.annotations.regions import Region
from imageml_core.annotations.validate import clean_coco, clean_label_studio

_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
#: Items of each conversion list (choices, merged, adjusted) kept in a file's intake entry.
MAX_LISTED = 100


@dataclass(frozen=True)
class ImageRef:
    """An ingested image: its URI and size in pixels of the displayed frame (EXIF orientation
    applied: the frame annotation coordinates are read in)."""

    uri: str
    width: int
    height: int


@dataclass(frozen=True)
class LabelConfig:
    """A folder's ``label_config.xml``: its URI and text (ingest checked that it parses)."""

    uri: str
    text: str


@dataclass
class IntakeReport:
    """What annotation intake found (stored in the augment manifest).

    ``files``: one entry per annotation file, with its format and conversion, or ``error``
    when it cannot be used at all; ``problems``: records left out of a usable file, with the
    file, their JSON path and the reason; ``unmatched_names``: names matching no ingested
    image of the file's folder; ``named_twice``: images a later file named again (the file
    that sorts first wins); ``not_converted``: Label Studio items the conversion skipped."""

    files: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    unmatched_names: list[dict[str, str]] = field(default_factory=list)
    named_twice: list[dict[str, Any]] = field(default_factory=list)
    not_converted: list[dict[str, Any]] = field(default_factory=list)
    category_ids: dict[str, int] = field(default_factory=dict)
    _category_files: dict[str, str] = field(default_factory=dict, repr=False)

    def category(self, file_uri: str, path: str, name: str, category_id: Any) -> None:
        """Keep ``category_id`` (the user's class id) for ``name``, unless it is not an
        integer or another file already gave the name or the id otherwise (reported)."""
        if isinstance(category_id, bool) or not isinstance(category_id, int):
            self.problem(
                file_uri, path, f"category id {category_id!r} is not an integer: a new id is used"
            )
            return
        known = self.category_ids.get(name)
        if known is not None and known != category_id:
            self.problem(
                file_uri,
                path,
                f"category {name!r} has id {category_id} here but {known} in "
                f"{self._category_files[name]}; {known} is used",
            )
            return
        holder = next((n for n, i in self.category_ids.items() if i == category_id), None)
        if holder is not None and holder != name:
            self.problem(
                file_uri,
                path,
                f"category id {category_id} names {name!r} here but {holder!r} in "
                f"{self._category_files[holder]}; {name!r} gets a new id",
            )
            return
        self.category_ids[name] = category_id
        self._category_files.setdefault(name, file_uri)

    def as_dict(self) -> dict[str, Any]:
        """The lists as a JSON-ready dict."""
        return {
            "files": self.files,
            "problems": self.problems,
            "unmatched_names": self.unmatched_names,
            "named_twice": self.named_twice,
            "not_converted": self.not_converted,
            "category_ids": self.category_ids,
        }

    def issues(self) -> list[tuple[str, str, str]]:
        """Everything reported, as ``(file, record, reason)`` rows (for the asset's
        metadata): unusable files, records left out, names that match no image, images
        named twice and what the conversion skipped."""
        rows = [(f["uri"], "", str(f["error"])) for f in self.files if "error" in f]
        rows += [(p["file"], p["path"], p["reason"]) for p in self.problems]
        rows += [
            (u["file"], u["name"], "names no ingested image of the file's folder")
            for u in self.unmatched_names
        ]
        rows += [
            (t["files"][1], t["image_uri"], f"image already named by {t['files'][0]}, which wins")
            for t in self.named_twice
        ]
        rows += [
            (
                str(n.get("file", "")),
                " ".join(f"{k} {n[k]}" for k in ("level", "task_id", "region_id") if n.get(k)),
                str(n.get("reason", "")),
            )
            for n in self.not_converted
        ]
        return rows

    def problem(self, file_uri: str, path: str, reason: str) -> None:
        """Record a record of ``file_uri`` left out, at JSON ``path``, and why."""
        self.problems.append({"file": file_uri, "path": path, "reason": reason})


def folder_of(uri: str) -> str:
    """The URI up to its last ``/`` (no trailing slash): the folder an object is in."""
    return uri.rsplit("/", 1)[0]


def base_name(ref: str) -> str:
    """The file name in a path, URI or URL: after the last ``/`` or ``\\``, query string
    removed; a Label Studio data URL's ``?d=<path>`` is followed, and %-escapes are
    decoded (``Capture%20d%C3%A9cran.png`` names ``Capture décran.png``)."""
    if "?d=" in ref:  # Label Studio's /data/local-files/?d=<path>[&...]: a query value,
        # so it is decoded first (``%2F`` is a folder separator in it)
        ref = unquote(ref.split("?d=", 1)[1].split("&", 1)[0])
        return ref.replace("\\", "/").rsplit("/", 1)[-1]
    return unquote(ref.replace("\\", "/").split("?", 1)[0].rsplit("/", 1)[-1])


def _polygon_parts(segmentation: Any) -> tuple[list[list[float]], int]:
    """Polygon parts of a COCO segmentation, and how many parts were unusable (an odd number
    of coordinates, fewer than 3 points, not numbers). An RLE mask has no parts."""
    if not isinstance(segmentation, list):
        return [], 0
    parts, bad = [], 0
    for part in segmentation:
        try:
            values = [float(v) for v in part]
        except (TypeError, ValueError):
            bad += 1
            continue
        if not all(math.isfinite(v) for v in values):
            bad += 1
            continue
        if len(values) < 6 or len(values) % 2:
            bad += 1
            continue
        parts.append(values)
    return parts, bad


def regions_from_coco(
    doc: Mapping[str, Any], problem: Callable[[str, str], None] = lambda _p, _r: None
) -> dict[str, list[Region]]:
    """COCO (pixels, ``[x, y, w, h]``, top-left origin) -> regions per image *file name*.

    ``doc`` has been through :func:`~imageml_core.annotations.validate.clean_coco`; what it
    still cannot use is reported through ``problem(json_path, reason)`` and left out:
    a second image or category with the same id (the first is used), an annotation of an
    unknown image or category, a crowd region (``iscrowd`` true: an area to ignore, not an
    object), a box with no area and no polygon. A polygon part with an odd number of
    coordinates is dropped (the box stays). One polygon part is the region's polygon; of
    several parts only the box is kept. An annotation with a polygon and no ``bbox`` gets
    the polygon's bounds as its box.
    """
    from imageml_core.annotations.common import is_crowd

    categories: dict[Any, str] = {}
    for n, c in _indexed(doc, "categories"):
        if _id(c["id"]) in categories:
            problem(f".categories[{n}]", f"category id {c['id']} appears twice (the first is used)")
            continue
        categories[_id(c["id"])] = str(c["name"])
    names: dict[Any, str] = {}
    first_of: dict[str, Any] = {}  # file name -> the image id that named it first
    renamed: set[Any] = set()  # ids of images that named a file again (reported once)
    for n, img in _indexed(doc, "images"):
        where = f"task {img['ls_task_id']}" if "ls_task_id" in img else f".images[{n}]"
        if _id(img["id"]) in names:
            problem(where, f"image id {img['id']} appears twice (the first is used)")
            continue
        name = str(img["file_name"])
        if name in first_of:
            problem(
                where,
                f"names {name} again (image id {first_of[name]} named it first and is used; "
                "this record's regions are left out)",
            )
            renamed.add(_id(img["id"]))
            continue
        first_of[name] = _id(img["id"])
        names[_id(img["id"])] = name
    out: dict[str, list[Region]] = defaultdict(list)
    for n, raw in _indexed(doc, "annotations"):
        ann = {**raw, "image_id": _id(raw["image_id"]), "category_id": _id(raw["category_id"])}
        if ann["image_id"] in renamed:
            continue
        region = _region(
            ann, names, categories, is_crowd, lambda r, n=n: problem(f".annotations[{n}]", r)
        )
        if region is not None:
            out[names[ann["image_id"]]].append(region)
    return dict(out)


def _indexed(doc: Mapping[str, Any], key: str) -> list[tuple[int, Mapping[str, Any]]]:
    """``doc[key]``'s records with their position *in the file* (records that
    :func:`~imageml_core.annotations.validate.clean_coco` left out shift the list; it keeps
    the original position in ``_index``)."""
    return [(int(r.get("_index", n)), r) for n, r in enumerate(doc.get(key, []))]


def _id(value: Any) -> Any:
    """An id as an int when it is int-like (COCO-Annotator writes some as strings)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _region(
    ann: Mapping[str, Any],
    names: Mapping[Any, str],
    categories: Mapping[Any, str],
    is_crowd: Callable[[Any], bool],
    problem: Callable[[str], None],
) -> Region | None:
    if ann["image_id"] not in names:
        problem(f"image_id {ann['image_id']} is not among the images")
        return None
    if ann["category_id"] not in categories:
        problem(f"category_id {ann['category_id']} is not among the categories")
        return None
    if is_crowd(ann.get("iscrowd")):
        problem("crowd region (iscrowd=1): an area to ignore, not an object; left out")
        return None
    segmentation = ann.get("segmentation")
    parts, bad = _polygon_parts(segmentation)
    if bad:
        problem(
            f"{bad} polygon part(s) with an odd number, fewer than 6 or non-finite "
            "coordinates dropped"
        )
    if isinstance(segmentation, Mapping):
        problem("RLE mask segmentation: only its bbox is kept (masks are not carried)")
    bbox = ann.get("bbox")
    if (bbox is None or bbox[2] <= 0 or bbox[3] <= 0) and parts:
        xs = [x for p in parts for x in p[0::2]]
        ys = [y for p in parts for y in p[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    if bbox is None or bbox[2] <= 0 or bbox[3] <= 0:
        problem("no box with an area and no polygon")
        return None
    x, y, w, h = (float(v) for v in bbox)
    polygon = tuple(parts[0]) if len(parts) == 1 else ()
    return Region(categories[ann["category_id"]], (x, y, w, h), polygon, (), str(ann.get("id")))


def collect_annotations(
    images: Sequence[ImageRef],
    annotation_files: Sequence[tuple[str, Path]],
    *,
    folder_images: Mapping[str, Sequence[ImageRef]],
    label_configs: Mapping[str, LabelConfig] | None = None,
) -> tuple[dict[str, list[Region]], IntakeReport]:
    """Regions for each of ``images`` (by URI) from the annotation files of their folders.

    ``folder_images`` lists every ingested image per folder (all batches), so a name that
    matches an image of another batch is not reported as unmatched; ``label_configs`` are
    the folders' ``label_config.xml`` files, by folder. Never raises for a
    file's content: a file that cannot be used at all is reported in ``files`` with the
    reason, a record that cannot be used in ``problems``; the rest is used.
    """
    report = IntakeReport()
    wanted = {img.uri for img in images}
    by_uri: dict[str, list[Region]] = {}
    claimed: dict[str, str] = {}
    for file_uri, path in sorted(annotation_files):
        folder = folder_of(file_uri)
        siblings = {base_name(i.uri): i for i in folder_images.get(folder, [])}
        entry: dict[str, Any] = {"uri": file_uri}
        try:
            per_name = _read_file(file_uri, path, siblings, label_configs or {}, entry, report)
        except Exception as exc:
            report.files.append({"uri": file_uri, "error": f"{type(exc).__name__}: {exc}"})
            continue
        report.files.append(entry)
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
                by_uri[match.uri] = _inside(regions, match, file_uri, report)
    return by_uri, report


def _read_file(
    file_uri: str,
    path: Path,
    siblings: Mapping[str, ImageRef],
    label_configs: Mapping[str, LabelConfig],
    entry: dict[str, Any],
    report: IntakeReport,
) -> dict[str, list[Region]]:
    """Regions per image name of one annotation file. Raises ``ValueError`` for a file
    that is not JSON of a known format."""
    doc = json.loads(path.read_bytes())
    fmt = detect_format(doc)
    entry["annotation_format"] = fmt
    if fmt == "coco":
        coco, problems = clean_coco(doc)
        _check_sizes(file_uri, coco, siblings, report)
        seen: set[Any] = set()
        for n, cat in _indexed(coco, "categories"):
            if _id(cat["id"]) not in seen:  # a repeated id is reported by regions_from_coco
                seen.add(_id(cat["id"]))
                report.category(file_uri, f".categories[{n}]", str(cat["name"]), _id(cat["id"]))
    else:
        tasks, problems = clean_label_studio([doc] if isinstance(doc, Mapping) else doc)
        coco = _label_studio_as_coco(file_uri, tasks, siblings, label_configs, entry, report)
    for p in problems:
        report.problem(file_uri, p.path, p.reason)
    return regions_from_coco(coco, lambda where, why: report.problem(file_uri, where, why))


def _inside(
    regions: list[Region], image: ImageRef, file_uri: str, report: IntakeReport
) -> list[Region]:
    """``regions`` that overlap their image; one wholly outside it (a box in another frame,
    negative coordinates) is reported and left out, rather than vanish at augmentation."""
    if not (image.width and image.height):
        return regions
    kept = []
    for r in regions:
        x, y, w, h = r.bbox
        if x < image.width and y < image.height and x + w > 0 and y + h > 0:
            kept.append(r)
            continue
        report.problem(
            file_uri,
            f"{base_name(image.uri)}, region {r.source_id or r.label}",
            f"box [{x:g}, {y:g}, {w:g}, {h:g}] lies wholly outside the "
            f"{image.width}x{image.height} image; left out",
        )
    return kept


def _check_sizes(
    file_uri: str, coco: Mapping[str, Any], siblings: Mapping[str, ImageRef], report: IntakeReport
) -> None:
    """Report COCO images whose width/height differ from the image's own (displayed) size:
    their boxes are in another frame and may fall outside the image."""
    for n, img in _indexed(coco, "images"):
        match = _match(base_name(str(img["file_name"])), siblings)
        if match is None or img.get("width") is None or img.get("height") is None:
            continue
        stated = (round(float(img["width"])), round(float(img["height"])))
        if stated != (match.width, match.height):
            report.problem(
                file_uri,
                f".images[{n}]",
                f"width x height {stated[0]}x{stated[1]} in the file, but the image is "
                f"{match.width}x{match.height}: its boxes are read as given and may fall "
                "outside the image",
            )


def _label_studio_as_coco(
    file_uri: str,
    tasks: list[dict[str, Any]],
    siblings: Mapping[str, ImageRef],
    label_configs: Mapping[str, LabelConfig],
    entry: dict[str, Any],
    report: IntakeReport,
) -> dict[str, Any]:
    """A Label Studio export converted by the SDK (:func:`ls_to_coco`); an export with no
    rectangle or polygon region at all (empty, unlabelled, classification only) has
    nothing to convert: its images stay unlabelled. With the folder's ``label_config.xml``
    the labels results use are checked against it."""
    given = label_configs.get(folder_of(file_uri))
    if given is not None:
        entry["label_config_uri"] = given.uri
        _check_labels(file_uri, tasks, given, report)
    config = given.text if given is not None else infer_label_config(tasks)
    if "<RectangleLabels" not in config and "<PolygonLabels" not in config:
        entry["converted"] = {"tasks": 0, "annotations": 0}
        entry["note"] = "no rectangle or polygon regions: the images stay unlabelled"
        return {"images": [], "annotations": [], "categories": []}
    sizes = {}
    for task in tasks:
        # Whatever data key the config reads the image from: every string value that names
        # an image of the folder.
        for ref in (v for v in task["data"].values() if isinstance(v, str)):
            match = _match(base_name(ref), siblings)
            if match is not None:
                sizes[ref] = (match.width, match.height)
    coco, conv = ls_to_coco(tasks, config, image_sizes=sizes)
    entry.update(
        converter_version=conv.converter_version,
        conversion_parameters=conv.conversion_parameters,
        converted=conv.converted,
        # Which annotation of a task was used, rectangles folded into polygons, sizes
        # supplied or corrected (the first MAX_LISTED of each; counts in "converted").
        choices=conv.choices[:MAX_LISTED],
        merged=conv.merged[:MAX_LISTED],
        adjusted=conv.adjusted[:MAX_LISTED],
    )
    for skipped in conv.skipped:
        report.not_converted.append({"file": file_uri, **skipped})
    for change in conv.adjusted:
        if "differ from the image's" in str(change.get("change")):
            report.problem(file_uri, f"task {change.get('task_id')}", str(change["change"]))
    return coco


def _check_labels(
    file_uri: str, tasks: Sequence[Mapping[str, Any]], config: LabelConfig, report: IntakeReport
) -> None:
    """Report every label a result uses that its control in ``config`` does not declare
    (Label Studio itself shows such a region, so it is kept)."""
    declared = config_labels(config.text)
    for task in tasks:
        for field_name in ("annotations", "predictions"):
            for item in task.get(field_name) or []:
                if not isinstance(item, Mapping):
                    continue
                for result in item.get("result") or []:
                    labels = declared.get(str(result.get("from_name")))
                    value = result.get("value") or {}
                    used = value.get(str(result.get("type"))) if labels is not None else None
                    for label in used if isinstance(used, list) else []:
                        if label not in labels:  # type: ignore[operator]
                            report.problem(
                                file_uri,
                                f"task {task.get('id')} {field_name[:-1]} {item.get('id')} "
                                f"region {result.get('id')}",
                                f"label {label!r} is not in {config.uri} (control "
                                f"{result.get('from_name')!r}); the region is kept",
                            )


def _match(name: str, siblings: Mapping[str, ImageRef]) -> ImageRef | None:
    if name in siblings:
        return siblings[name]
    stripped = _LS_UPLOAD_PREFIX.sub("", name)
    return siblings.get(stripped)
