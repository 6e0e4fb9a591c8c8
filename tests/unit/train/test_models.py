"""The models: CenterNet targets and decoding agree, the exported detector keeps the
contract's output convention, names and weights files fail with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from imageml_core.stages.train.centernet import build_targets, decode
from imageml_core.stages.train.contract import MAX_DETECTIONS, TrainingError
from imageml_core.stages.train.models import (
    ExportedClassifier,
    ExportedDetector,
    build_classifier,
    build_detector,
    export_model,
)


def test_decode_recovers_a_box_from_its_own_targets() -> None:
    box = torch.tensor([[37.0, 21.0, 50.0, 30.0]])  # COCO xywh, input pixels
    goal = build_targets([box], [torch.tensor([2])], 3, (40, 40), 4)
    heat = goal["heatmap"]
    assert float(heat[0, 2].max()) == 1.0 and int(heat[0, 2].argmax()) == 9 * 40 + 15
    assert float(heat[0, :2].max()) == 0.0
    size, offset = torch.zeros(1, 2, 40, 40), torch.zeros(1, 2, 40, 40)
    at = (0, slice(None), goal["ys"][0], goal["xs"][0])
    size[at], offset[at] = goal["size"][0], goal["offset"][0]
    logits = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    boxes, scores, classes = decode(logits, size, offset, 4, 5)
    assert torch.allclose(boxes[0, 0], box[0], atol=1e-4)
    assert int(classes[0, 0]) == 2 and float(scores[0, 0]) > 0.99
    assert bool((scores[0, 1:] < 0.99).all())  # the Gaussian's shoulders are not peaks


def test_exported_detector_follows_the_contract_and_survives_torch_save(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_detector("resnet10t", 3)
    exported = export_model(net, "detection", [3, 5, 9], 64)
    assert isinstance(exported, ExportedDetector) and not exported.training
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = exported(images)
    assert out.shape == (2, MAX_DETECTIONS, 6) and out.dtype == torch.float32
    scores = out[..., 4]
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # sorted by score
    used = scores > 0
    assert set(out[..., 5][used].tolist()) <= {3.0, 5.0, 9.0}
    assert bool((out[..., 5][~used] == 0).all()) and bool((out[~used] == 0).all())
    x, y, w, h = out[..., 0], out[..., 1], out[..., 2], out[..., 3]
    assert bool((x >= 0).all() & (y >= 0).all() & (w >= 0).all() & (h >= 0).all())
    assert bool((x + w <= 64).all() & (y + h <= 64).all())
    torch.save(exported, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(images), out)


def test_exported_classifier_gives_probabilities() -> None:
    exported = export_model(build_classifier("resnet10t", 4), "classification", [1, 2, 3, 4], 32)
    assert isinstance(exported, ExportedClassifier)
    with torch.no_grad():
        probs = exported(torch.rand(3, 3, 32, 32))
    assert probs.shape == (3, 4) and torch.allclose(probs.sum(dim=1), torch.ones(3))


def test_names_and_weights_files_fail_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(
        TrainingError, match=r"unknown timm model 'resnet10': did you mean resnet10t"
    ):
        build_detector("resnet10", 3)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(TrainingError, match=f"weights file not found: {missing}"):
        build_detector("resnet10t", 3, str(missing))
    with pytest.raises(TrainingError, match="at least two categories"):
        build_classifier("resnet10t", 1)


def test_a_local_weights_file_is_loaded_into_the_backbone(tmp_path: Path) -> None:
    reference = timm.create_model("resnet10t", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    net = build_detector("resnet10t", 2, str(tmp_path / "w.pth"))
    got = net.backbone.state_dict()["layer4.0.conv2.weight"]
    assert torch.equal(got, reference.state_dict()["layer4.0.conv2.weight"])
