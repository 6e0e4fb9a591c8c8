"""Labelling configs for category lists, and offline validation of Label Studio tasks."""

from __future__ import annotations

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
    """
    labels = "".join(
        f"    <Label value={quoteattr(name)}"
        + (f' category="{cid}"' if isinstance(cid, int) and not isinstance(cid, bool) else "")
        + "/>\n"
        for name, cid in category_names(categories).items()
    )
    controls: list[tuple[str, str]] = []
    if kind in ("rectangle", "rectangle+polygon"):
        controls.append(("RectangleLabels", from_name))
    if kind in ("polygon", "rectangle+polygon"):
        controls.append(("PolygonLabels", polygon_control_name(kind, from_name, polygon_from_name)))
    if not controls:
        raise ValueError(f"kind must be rectangle, polygon or rectangle+polygon, not {kind!r}")
    body = f"  <Image name={quoteattr(to_name)} value={quoteattr('$' + data_key)}/>\n"
    for tag, name in controls:
        body += (
            f"  <{tag} name={quoteattr(name)} toName={quoteattr(to_name)}>\n{labels}  </{tag}>\n"
        )
    return f"<View>\n{body}</View>\n"


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
