"""Validation metrics: COCO box mAP for detection, accuracy for classification.

Detection uses faster-coco-eval (a C++ reimplementation of pycocotools' ``COCOeval`` with
the same API and numbers): ``map_50`` is AP at IoU 0.5 and ``map_50_95`` AP averaged over
IoU 0.50:0.05:0.95, both over all areas with up to 100 detections per image (COCO's
``stats[1]`` and ``stats[0]``). Boxes are COCO ``[x, y, w, h]`` (top-left corner, size) in
pixels; ground truth and predictions must use the same frame (the trainer uses the source
image's pixels).

**Empty cases** (no crash, by rule): with no validation image, or no ground-truth box in
any validation image, mAP is undefined and :func:`detection_metrics` returns ``{}`` (no
metrics); with ground truth but no prediction it returns zeros. Images without ground
truth still count: their predictions are false positives. :func:`classification_metrics`
returns ``{}`` for no labelled validation image.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch import nn

from imageml_core.stages.train.contract import Task
from imageml_core.stages.train.shards import ShardDataset, make_loader

#: Validation images whose predictions go to the plot document (a grid), and the lowest
#: score kept there (lower ones would only clutter a plot).
PLOT_IMAGES = 16
PLOT_MIN_SCORE = 0.05


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval's print function, silenced (it reports every phase)."""


def ground_truth(
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[Sequence[Mapping[str, Any]]],
    categories: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A COCO ground-truth document: ``images[i]`` (``id``, ``width``, ``height`` in pixels)
    with ``annotations[i]`` (``category_id``, ``bbox`` xywh pixels; ``iscrowd`` kept when
    present, else 0); annotation ids from 1, ``area`` = w * h when missing."""
    anns = []
    for image, boxes in zip(images, annotations, strict=True):
        for ann in boxes:
            x, y, w, h = (float(v) for v in ann["bbox"])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(image["id"]),
                    "category_id": int(ann["category_id"]),
                    "bbox": [x, y, w, h],
                    "area": float(ann.get("area") or w * h),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
    return {
        "images": [
            {"id": int(i["id"]), "width": int(i["width"]), "height": int(i["height"])}
            for i in images
        ],
        "annotations": anns,
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
    }


def detections_to_coco(
    rows: torch.Tensor, image_id: int, scale: float = 1.0
) -> list[dict[str, Any]]:
    """COCO results (``image_id``, ``category_id``, ``bbox``, ``score``) from one image's
    exported-detector output ``rows [K, 6]`` (``x, y, w, h, score, category_id`` in input
    pixels); boxes divided by ``scale`` (the letterbox factor) to give source pixels. Zero
    rows (no detection) are skipped."""
    out = []
    for x, y, w, h, score, cat in rows.detach().cpu().tolist():
        if score <= 0:
            continue
        out.append(
            {
                "image_id": int(image_id),
                "category_id": round(cat),
                "bbox": [x / scale, y / scale, w / scale, h / scale],
                "score": float(score),
            }
        )
    return out


def detection_metrics(
    gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """``{"map_50", "map_50_95"}`` of ``predictions`` (COCO results) against ``gt`` (a COCO
    document, e.g. from :func:`ground_truth`); ``{}`` when mAP is undefined (module
    docstring)."""
    if not gt.get("images") or not gt.get("annotations"):
        return {}
    if not predictions:
        return {"map_50": 0.0, "map_50_95": 0.0}
    # Copies: COCO() indexes and may extend the dicts it is given.
    coco_gt = COCO(
        {k: [dict(v) for v in gt[k]] for k in ("images", "annotations", "categories")},
        print_function=_quiet,
    )
    coco_dt = coco_gt.loadRes([dict(p) for p in predictions])
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    map_50_95, map_50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    if map_50 < 0:  # COCOeval's -1: nothing to evaluate
        return {}
    return {"map_50": map_50, "map_50_95": map_50_95}


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"accuracy", "top5_accuracy"}`` of class scores ``probs [N, C]`` against class
    indices ``labels [N]``; top-5 uses ``k = min(5, C)`` (so it is 1.0 for C <= 5). ``{}``
    for ``N == 0``."""
    if len(labels) == 0:
        return {}
    labels = labels.view(-1, 1).to(probs.device)
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    return {
        "accuracy": float((top[:, :1] == labels).any(dim=1).float().mean()),
        "top5_accuracy": float((top == labels).any(dim=1).float().mean()),
    }


def evaluate_model(
    exported: nn.Module,
    dataset: ShardDataset,
    task: Task,
    categories: Sequence[Mapping[str, Any]],
    device: torch.device,
    batch_size: int = 32,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run an exported model (:mod:`.models`) over ``dataset`` (letterboxed images):
    its metrics (:func:`detection_metrics` against the annotations in source pixels, or
    :func:`classification_metrics` against each image's one category), and a plot
    document for the first :data:`PLOT_IMAGES` images, COCO-style in source-image pixels:
    ``images`` (``id``, ``key``, ``shard`` path, ``width``, ``height``), ``annotations``,
    ``predictions`` (``image_id``, ``category_id``, ``bbox`` for detection, ``score``; at
    least :data:`PLOT_MIN_SCORE`; the top class for classification), ``categories``."""
    ids = list(dataset.class_of)  # category id per class index
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, seed=0)
    images: list[dict[str, Any]] = []
    truth: list[list[dict[str, Any]]] = []
    results: list[dict[str, Any]] = []
    probs, labels = [], []
    with torch.inference_mode():
        for batch, targets in loader:
            out = exported(batch.to(device)).cpu()
            for rows, target in zip(out, targets, strict=True):
                i = target["index"]
                record = dataset.records[i]
                width, height = target["size"]
                image = {"id": i + 1, "key": record.key, "shard": str(record.shard)}
                images.append({**image, "width": width, "height": height})
                boxes, classes = dataset.boxes(i)
                truth.append(
                    [
                        {"category_id": ids[c], "bbox": b.tolist()}
                        for b, c in zip(boxes, classes.tolist(), strict=True)
                    ]
                )
                if task == "detection":
                    results += detections_to_coco(rows, i + 1, target["scale"])
                else:
                    probs.append(rows)
                    labels.append(int(classes[0]))
    gt = ground_truth(images, truth, categories)
    if task == "detection":
        metrics = detection_metrics(gt, results)
    else:
        scores = torch.stack(probs) if probs else torch.zeros(0, len(ids))
        metrics = classification_metrics(scores, torch.tensor(labels, dtype=torch.long))
        results = [
            {
                "image_id": img["id"],
                "category_id": ids[int(row.argmax())],
                "score": float(row.max()),
            }
            for img, row in zip(images, scores, strict=True)
        ]
    shown = {img["id"] for img in images[:PLOT_IMAGES]}
    plot = {
        "task": task,
        "coordinates": "COCO [x, y, w, h] in pixels of the source image",
        "categories": gt["categories"],
        "images": images[:PLOT_IMAGES],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in shown],
        "predictions": [
            r for r in results if r["image_id"] in shown and r["score"] >= PLOT_MIN_SCORE
        ],
    }
    return metrics, plot
