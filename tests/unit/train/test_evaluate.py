"""Validation metrics: COCO mAP through faster-coco-eval, accuracy, and the empty cases."""

from __future__ import annotations

import pytest
import torch

from imageml_core.stages.train.evaluate import (
    classification_metrics,
    detection_metrics,
    detections_to_coco,
    ground_truth,
)

CATS = [{"id": 1, "name": "a"}, {"id": 4, "name": "b"}]
IMAGES = [
    {"id": 1, "width": 100, "height": 80},
    {"id": 2, "width": 100, "height": 80},
    {"id": 3, "width": 100, "height": 80},
]
BOXES = [
    [{"category_id": 1, "bbox": [10, 10, 30, 20]}, {"category_id": 4, "bbox": [50, 40, 20, 20]}],
    [{"category_id": 4, "bbox": [5, 5, 40, 40]}],
    [],  # an image without ground truth
]


def _predictions(shift: float = 0.0) -> list[dict]:
    return [
        {
            "image_id": i + 1,
            "category_id": b["category_id"],
            "bbox": [b["bbox"][0] + shift, *b["bbox"][1:]],
            "score": 0.9,
        }
        for i, boxes in enumerate(BOXES)
        for b in boxes
    ]


def test_perfect_predictions_score_one_and_shifted_ones_less() -> None:
    gt = ground_truth(IMAGES, BOXES, CATS)
    assert detection_metrics(gt, _predictions()) == {"map_50": 1.0, "map_50_95": 1.0}
    shifted = detection_metrics(gt, _predictions(shift=6.0))
    assert shifted["map_50_95"] < shifted["map_50"] <= 1.0 and shifted["map_50_95"] < 0.9
    # A confident false positive on the image without ground truth costs precision.
    extra = [
        *_predictions(),
        {"image_id": 3, "category_id": 1, "bbox": [1, 1, 9, 9], "score": 0.95},
    ]
    assert detection_metrics(gt, extra)["map_50"] < 1.0


def test_empty_cases_do_not_crash() -> None:
    gt = ground_truth(IMAGES, BOXES, CATS)
    assert detection_metrics(gt, []) == {"map_50": 0.0, "map_50_95": 0.0}
    assert detection_metrics(ground_truth([], [], CATS), []) == {}
    assert detection_metrics(ground_truth(IMAGES, [[], [], []], CATS), _predictions()) == {}
    assert classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == {}


def test_exported_rows_become_coco_results_in_source_pixels() -> None:
    rows = torch.zeros(100, 6)
    rows[0] = torch.tensor([10.0, 20.0, 30.0, 40.0, 0.8, 4.0])
    assert detections_to_coco(rows, 7, scale=0.5) == [
        {
            "image_id": 7,
            "category_id": 4,
            "bbox": [20.0, 40.0, 60.0, 80.0],
            "score": 0.800000011920929,
        }
    ]


def test_accuracy_and_top_k_with_k_at_most_the_class_count() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
    labels = torch.tensor([0, 1, 1])
    metrics = classification_metrics(probs, labels)
    assert metrics == {"accuracy": pytest.approx(2 / 3), "top5_accuracy": 1.0}
    many = torch.eye(8)[[0, 1]] * 0.5 + 0.01 * torch.arange(8.0)
    # Row 1's top five are classes 1, 7, 6, 5, 4: class 5 is in them, class 2 is not.
    assert classification_metrics(many, torch.tensor([0, 5])) == {
        "accuracy": 0.5,
        "top5_accuracy": 1.0,
    }
    assert classification_metrics(many, torch.tensor([0, 2]))["top5_accuracy"] == 0.5
