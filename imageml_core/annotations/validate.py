"""Checking annotation files record by record before conversion: what cannot be used is
left out with its JSON path and the reason, what can is kept, and one bad record (or one
bad file) never fails the batch (issue 9).

The shapes are pydantic models of the parts the pipeline reads (extra fields allowed):
a Label Studio export is a list of tasks ``{"data": {...}, "annotations": [...],
"predictions": [...]}`` whose results are ``{"type", "from_name", "to_name", "value": {...}}``;
a COCO document has ``images`` ``{"id", "file_name", "width", "height"}``, ``categories``
``{"id", "name"}`` and ``annotations`` ``{"id", "image_id", "category_id", "bbox":
[x, y, w, h], "segmentation", "iscrowd"}`` (pixels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


@dataclass(frozen=True)
class Problem:
    """A record left out: where it is in the file (a JSON path such as
    ``[3].annotations[0].result[1].value``) and why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class _Model(BaseModel):
    # NaN and Infinity parse from JSON (Python's json accepts them) but are no coordinate.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class LabelStudioTask(_Model):
    data: dict[str, Any]
    annotations: list[Any] = []
    predictions: list[Any] = []


class LabelStudioAnnotation(_Model):
    result: list[Any] = []


class LabelStudioResult(_Model):
    type: str | None = None
    from_name: str | None = None
    to_name: str | None = None
    value: dict[str, Any]


class CocoImage(_Model):
    id: int | str
    file_name: str
    width: float | None = None
    height: float | None = None


class CocoCategory(_Model):
    id: int | str
    name: str


class CocoAnnotation(_Model):
    id: int | str | None = None
    image_id: int | str
    category_id: int | str
    bbox: list[float] | None = None
    segmentation: Any = None
    iscrowd: Any = 0

    @field_validator("bbox")
    @classmethod
    def _four_numbers(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) != 4:
            raise ValueError(f"bbox must be [x, y, width, height], got {len(value)} numbers")
        return value


def _why(exc: ValidationError) -> tuple[str, str]:
    """(sub-path, message) of the first error, e.g. (".bbox", "Input should be a list")."""
    error = exc.errors(include_url=False)[0]
    sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return sub, message


def _checked(model: type[_Model], item: Any, path: str, problems: list[Problem]) -> Any:
    """``item`` validated as ``model`` (as a plain dict), or None with a problem recorded."""
    try:
        return model.model_validate(item).model_dump()
    except ValidationError as exc:
        sub, message = _why(exc)
        problems.append(Problem(path + sub, message))
        return None


IDS_ONLY = (
    "listed as ids, not objects: a Label Studio JSON export made without the full "
    "annotations/predictions; export them in full to use them"
)


def clean_label_studio(tasks: list[Any]) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Tasks, annotations, predictions and results that have the shape the converter reads;
    each one left out is a :class:`Problem`. A task without annotations stays (an
    unlabelled image)."""
    problems: list[Problem] = []
    cleaned: list[dict[str, Any]] = []
    for i, raw in enumerate(tasks):
        task = _checked(LabelStudioTask, raw, f"[{i}]", problems)
        if task is None:
            continue
        for kind in ("annotations", "predictions"):
            items = task[kind]
            if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
                problems.append(Problem(f"[{i}].{kind}", IDS_ONLY))
                task[kind] = []
                continue
            kept = []
            for j, item in enumerate(items):
                where = f"[{i}].{kind}[{j}]"
                ann = _checked(LabelStudioAnnotation, item, where, problems)
                if ann is None:
                    continue
                ann["result"] = [
                    r
                    for k, res in enumerate(ann["result"])
                    if (r := _checked(LabelStudioResult, res, f"{where}.result[{k}]", problems))
                    is not None
                ]
                kept.append(ann)
            task[kind] = kept
        cleaned.append(task)
    return cleaned, problems


def clean_coco(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The images, categories and annotations that have COCO's shape; each one left out is
    a :class:`Problem`. Each kept record carries its position in the file as ``_index``, so
    later problems name the right record. Checks across records (unknown ids, duplicates)
    are the reader's (:func:`imageml_core.annotations.intake.regions_from_coco`)."""
    problems: list[Problem] = []
    out: dict[str, Any] = dict(doc)
    for key, model in (
        ("images", CocoImage),
        ("categories", CocoCategory),
        ("annotations", CocoAnnotation),
    ):
        items = doc.get(key) or []
        if not isinstance(items, list):
            problems.append(Problem(f".{key}", f"expected a list, got {type(items).__name__}"))
            items = []
        out[key] = [
            {**item, "_index": n}
            for n, raw in enumerate(items)
            if (item := _checked(model, raw, f".{key}[{n}]", problems)) is not None
        ]
    return out, problems
