"""Labelling configs for category lists, and offline validation of Label Studio tasks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

RegionKind = Literal["rectangle", "polygon", "rectangle+polygon"]


def category_names(categories: Iterable[str] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Name -> COCO id (or None) from plain strings or COCO category dicts; order kept,
    the first of repeated names wins."""
    names: dict[str, Any] = {}
    for cat in categories:
        if isinstance(cat, Mapping):
            names.setdefault(str(cat["name"]), cat.get("id"))
        else:
            names.setdefault(str(cat), None)
    return names


def polygon_control_name(
    kind: RegionKind, from_name: str = "label", polygon_from_name: str | None = None
) -> str:
    """The ``PolygonLabels`` control name for ``kind``: ``from_name`` when polygons are the
    only region kind, otherwise ``polygon_from_name`` or ``f"{from_name}_polygon"``."""
    if kind == "polygon":
        return polygon_from_name or from_name
    return polygon_from_name or f"{from_name}_polygon"


#: Control tag per Label Studio result ``type`` (what an inferred config declares).
CONTROL_TAGS = {
    "rectanglelabels": "RectangleLabels",
    "polygonlabels": "PolygonLabels",
    "keypointlabels": "KeyPointLabels",
    "brushlabels": "BrushLabels",
    "labels": "Labels",
}


def render_label_config(
    images: Iterable[str],
    controls: Iterable[tuple[str, str, str, Mapping[str, Any]]],
    *,
    data_keys: Mapping[str, str] | None = None,
) -> str:
    """The one writer of Label Studio labelling configs (XML); every attribute is escaped.

    ``images`` are ``<Image>`` tag names, each reading task ``data[data_keys.get(name,
    name)]``; ``controls`` are ``(tag, name, to_name, labels)`` with ``labels`` mapping a
    label value to its COCO category id (an int, written as the ``category`` attribute,
    which the SDK's COCO export uses as the category id) or None.
    """
    keys = data_keys or {}
    body = "".join(
        f"  <Image name={quoteattr(n)} value={quoteattr('$' + keys.get(n, n))}/>\n" for n in images
    )
    for tag, name, to_name, labels in controls:
        body += f"  <{tag} name={quoteattr(name)} toName={quoteattr(to_name)}>\n"
        for value, cid in labels.items():
            category = (
                f' category="{cid}"' if isinstance(cid, int) and not isinstance(cid, bool) else ""
            )
            body += f"    <Label value={quoteattr(value)}{category}/>\n"
        body += f"  </{tag}>\n"
    return f"<View>\n{body}</View>\n"


def label_config_for(
    categories: Iterable[str] | Iterable[Mapping[str, Any]],
    kind: RegionKind = "rectangle",
    *,
    from_name: str = "label",
    to_name: str = "image",
    data_key: str = "image",
    polygon_from_name: str | None = None,
) -> str:
    """A Label Studio labelling config (XML) with one label per category.

    ``kind="rectangle"`` gives one ``RectangleLabels`` control named ``from_name``,
    ``"polygon"`` one ``PolygonLabels`` control named ``from_name``, and
    ``"rectangle+polygon"`` both (polygons under :func:`polygon_control_name`). The image
    comes from task ``data[data_key]``; region values are percent of the original size.
    COCO category dicts with integer ids give each label a ``category`` attribute, which
    the SDK's COCO export uses as the category id (so a round trip keeps the ids).
    Raises ``ValueError`` for an unknown ``kind``.
    """
    labels = category_names(categories)
    controls: list[tuple[str, str, str, Mapping[str, Any]]] = []
    if kind in ("rectangle", "rectangle+polygon"):
        controls.append(("RectangleLabels", from_name, to_name, labels))
    if kind in ("polygon", "rectangle+polygon"):
        name = polygon_control_name(kind, from_name, polygon_from_name)
        controls.append(("PolygonLabels", name, to_name, labels))
    if not controls:
        raise ValueError(f"kind must be rectangle, polygon or rectangle+polygon, not {kind!r}")
    return render_label_config([to_name], controls, data_keys={to_name: data_key})


def infer_label_config(tasks: Sequence[Mapping[str, Any]]) -> str:
    """A labelling config covering every (from_name, to_name, type, label) the tasks'
    annotations and predictions use (for an export that came without its config). Each
    ``<Image>`` reads ``data[<to_name>]``, or the one string field of ``data`` when there is
    no such key.

    Result types without a control tag in :data:`CONTROL_TAGS` are left out (the converter
    reports their regions as not converted)."""
    tags: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for task in tasks:
        for ann in [*task.get("annotations", []), *task.get("predictions", [])]:
            for result in ann.get("result", []):
                kind = result.get("type", "")
                value = result.get("value", {})
                labels = value.get(kind) or value.get("labels") or []
                key = (result.get("from_name", "label"), result.get("to_name", "image"), kind)
                tags[key].update(labels)
    controls = [
        (CONTROL_TAGS[kind], from_name, to_name, dict.fromkeys(sorted(labels)))
        for (from_name, to_name, kind), labels in sorted(tags.items())
        if kind in CONTROL_TAGS
    ]
    images = sorted({to for _, to, _ in tags} or {"image"})
    # The image is read from data[<to_name>] in Label Studio's own configs; an export whose
    # data has no such key but one string field (data.photo for to_name "img") reads that.
    data_keys: dict[str, str] = {}
    datas = [t.get("data") for t in tasks if isinstance(t.get("data"), Mapping)]
    for name in images:
        if datas and not any(name in d for d in datas):  # type: ignore[operator]
            strings = {k for d in datas for k, v in d.items() if isinstance(v, str)}  # type: ignore[union-attr]
            if len(strings) == 1:
                data_keys[name] = strings.pop()
    return render_label_config(images, controls, data_keys=data_keys)


def validate_tasks(tasks: Sequence[Mapping[str, Any]], label_config: str) -> list[str]:
    """Every problem the SDK finds in ``tasks`` against ``label_config``, offline.

    Checks that each task's ``data`` holds every variable the config's object tags read,
    and validates each annotation and prediction with
    ``LabelInterface(config).validate_prediction(..., return_errors=True)`` (the same region
    checks ``validate_annotation`` applies, but with messages; annotations are also passed
    through ``validate_annotation``). An empty list means valid.
    """
    from label_studio_sdk.label_interface import LabelInterface

    try:
        li = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several types for a bad config
        return [f"label config does not parse: {exc}"]
    errors: list[str] = []
    for i, task in enumerate(tasks):
        where = f"task {i} (id {task.get('id')})" if isinstance(task, Mapping) else f"task {i}"
        data = task.get("data") if isinstance(task, Mapping) else None
        if not isinstance(data, Mapping):
            errors.append(f"{where}: no 'data' dict")
            continue
        for obj in li.objects:
            if obj.value_is_variable and data.get(obj.value_name) is None:
                errors.append(f"{where}: data has no '{obj.value_name}' for object '{obj.name}'")
        for j, ann in enumerate(task.get("annotations") or []):
            found = li.validate_prediction(ann, return_errors=True)
            if not found and not li.validate_annotation(ann):
                found = ["rejected by validate_annotation"]
            errors.extend(f"{where} annotation {j}: {e}" for e in found)
        for j, pred in enumerate(task.get("predictions") or []):
            errors.extend(
                f"{where} prediction {j}: {e}"
                for e in li.validate_prediction(pred, return_errors=True)
            )
    return errors


#: The file name of a labelling config beside a Label Studio export (README "Annotations").
LABEL_CONFIG_NAME = "label_config.xml"


def label_config_problem(text: str) -> str | None:
    """None when ``text`` is a labelling config Label Studio's SDK parses, else why not.

    Parsed with defusedxml first (no entity expansion or external entities from a file a
    user uploaded), then with ``LabelInterface``; the root element must be ``<View>``."""
    from defusedxml import ElementTree
    from label_studio_sdk.label_interface import LabelInterface

    try:
        root = ElementTree.fromstring(text)
    except Exception as exc:  # ParseError, and defusedxml's refusals (entities, DTDs)
        return f"labelling config is not well-formed XML: {type(exc).__name__}: {exc}"
    if root.tag != "View":
        return f"labelling config's root element is <{root.tag}>, not <View>"
    try:
        LabelInterface(text)
    except Exception as exc:  # the SDK raises several types for a bad config
        return f"Label Studio's SDK cannot read the labelling config: {exc}"
    return None


def config_labels(text: str) -> dict[str, set[str]]:
    """Label values per control name of a labelling config (controls with labels only:
    ``RectangleLabels``, ``PolygonLabels``, ``Choices``...). Raises the SDK's errors for a
    config that does not parse (check with :func:`label_config_problem` first)."""
    from label_studio_sdk.label_interface import LabelInterface

    return {
        c.name: set(c.labels)
        for c in LabelInterface(text).controls
        if getattr(c, "labels", None) is not None
    }
