"""Models of the built-in trainer, built from timm by name, and the exported modules that
go into ``model.pt`` (the contract in :class:`~.contract.ModelInfo`).

- detection: :class:`~.centernet.CenterNet` on ``timm.create_model(name,
  features_only=True)``; exported as :class:`ExportedDetector`;
- classification: ``timm.create_model(name, num_classes=C)``; exported as
  :class:`ExportedClassifier`.

Weights are never downloaded: models are built with ``pretrained=False`` unless a local
``pretrained_path`` (``.pth``/``.safetensors``) is given, which timm itself loads into the
backbone (its loader adapts a classifier checkpoint to ``features_only`` or to another
class count). Both training modules take float32 ``[N, 3, S, S]`` RGB in 0..1 and apply the
backbone's mean/std (ImageNet's unless timm's config says otherwise) inside, so training,
evaluation and the exported artifact see the same input.

The exported classes are plain module-level ``nn.Module`` subclasses (no lambdas, no
closures), so ``torch.save(module)`` / ``torch.load(path, weights_only=False)`` and
``mlflow.pytorch.log_model`` pickle them by reference; loading needs this package and timm.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from imageml_core.stages.train.centernet import CenterNet, decode
from imageml_core.stages.train.contract import MAX_DETECTIONS, Task, TrainingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Detections scoring below this are left out of the exported output (their rows stay
#: zero): 0.001 is the usual floor for COCO evaluation (e.g. torchvision's detectors use
#: 0.05 for display, mmdet 0.001 for mAP), low enough not to cost mAP.
SCORE_FLOOR = 1e-3


@functools.cache
def _all_models() -> tuple[str, ...]:
    return tuple(timm.list_models())


def check_model_name(name: str) -> None:
    """Raise :class:`TrainingError` ``unknown timm model 'x': did you mean ...?`` when timm
    has no architecture called ``name`` (close matches from ``timm.list_models()``)."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, _all_models(), n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else "see timm.list_models() for the names (e.g. resnet10t, resnet18, efficientnet_b0)"
    )
    raise TrainingError(f"unknown timm model {name!r}: {hint}")


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (no traceback), for errors and logs."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _create(name: str, pretrained_path: str | None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, with local weights when ``pretrained_path`` is
    set. Raises :class:`TrainingError` for an unknown name, a missing weights file, weights
    that do not fit, or a model timm cannot build this way."""
    check_model_name(name)
    weights: dict[str, Any] = {"pretrained": False}
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise TrainingError(f"pretrained weights file not found: {path}")
        # timm reads a pretrained_cfg 'file' before any hub or URL source; clearing those
        # makes sure nothing is ever fetched.
        overlay = {"file": str(path), "source": "", "hf_hub_id": None, "url": None}
        weights = {"pretrained": True, "pretrained_cfg_overlay": overlay}
    try:
        return timm.create_model(name, **weights, **kwargs)
    except Exception as exc:  # timm raises many types for an unsupported combination
        what = f" with weights {pretrained_path}" if pretrained_path else ""
        raise TrainingError(
            f"timm model {name!r} could not be built{what}: {one_line(exc)}"
        ) from exc


def _mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def build_detector(name: str, num_classes: int, pretrained_path: str | None = None) -> CenterNet:
    """A CenterNet detector on timm backbone ``name`` for ``num_classes`` classes (raises
    :class:`TrainingError` as :func:`_create`, or when ``num_classes < 1``)."""
    if num_classes < 1:
        raise TrainingError("detection needs at least one category; the dataset has none")
    backbone = _create(name, pretrained_path, features_only=True)
    mean, std = _mean_std(backbone)
    return CenterNet(backbone, num_classes, mean, std)


class Classifier(nn.Module):
    """A timm classifier with input normalization inside: float32 ``[N, 3, S, S]`` RGB in
    0..1 -> logits ``[N, C]``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def build_classifier(name: str, num_classes: int, pretrained_path: str | None = None) -> Classifier:
    """A timm classifier ``name`` with ``num_classes`` outputs (raises
    :class:`TrainingError` as :func:`_create`, or when ``num_classes < 2``)."""
    if num_classes < 2:
        raise TrainingError(
            f"classification needs at least two categories; the dataset has {num_classes}"
        )
    model = _create(name, pretrained_path, num_classes=num_classes)
    mean, std = _mean_std(model)
    return Classifier(model, mean, std)


def build_model(
    task: Task, name: str, num_classes: int, pretrained_path: str | None = None
) -> nn.Module:
    """:func:`build_detector` or :func:`build_classifier` by ``task``."""
    if task == "detection":
        return build_detector(name, num_classes, pretrained_path)
    return build_classifier(name, num_classes, pretrained_path)


class ExportedDetector(nn.Module):
    """The detection artifact: float32 ``[N, 3, S, S]`` RGB 0..1 (letterboxed) -> float32
    ``[N, max_detections, 6]`` rows ``(x, y, w, h, score, category_id)``: COCO boxes
    (top-left corner, size) in pixels of the ``S x S`` input, clipped to it, sorted by score
    (descending); rows below ``score_floor`` and unused rows are all zeros. ``category_id``
    is the dataset's id (a float holding an integer)."""

    def __init__(
        self,
        net: CenterNet,
        category_ids: Sequence[int],
        image_size: int,
        max_detections: int = MAX_DETECTIONS,
        score_floor: float = SCORE_FLOOR,
    ):
        super().__init__()
        self.net = net
        self.image_size = image_size
        self.max_detections = max_detections
        self.score_floor = score_floor
        self.register_buffer("category_ids", torch.tensor(list(category_ids), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        heat, size, offset = self.net(images)
        boxes, scores, classes = decode(heat, size, offset, self.net.stride, self.max_detections)
        limit = float(self.image_size)
        x1 = boxes[..., 0].clamp(0, limit)
        y1 = boxes[..., 1].clamp(0, limit)
        # A size head can predict a negative size early in training: width >= 0 always.
        x2 = torch.maximum((boxes[..., 0] + boxes[..., 2]).clamp(0, limit), x1)
        y2 = torch.maximum((boxes[..., 1] + boxes[..., 3]).clamp(0, limit), y1)
        rows = torch.stack([x1, y1, x2 - x1, y2 - y1, scores, self.category_ids[classes]], dim=-1)
        rows = rows * (scores >= self.score_floor).unsqueeze(-1)
        out = rows.new_zeros(rows.shape[0], self.max_detections, 6)
        out[:, : rows.shape[1]] = rows
        return out


class ExportedClassifier(nn.Module):
    """The classification artifact: float32 ``[N, 3, S, S]`` RGB 0..1 (letterboxed) ->
    float32 ``[N, C]`` softmax probabilities, column ``i`` = ``category_ids[i]``."""

    def __init__(self, net: Classifier):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).float().softmax(dim=-1)


def export_model(
    net: nn.Module, task: Task, category_ids: Sequence[int], image_size: int
) -> nn.Module:
    """The artifact module around a trained ``net`` (not a copy: ``net`` is shared), in
    eval mode. Move it to CPU before saving so it loads anywhere."""
    if task == "detection":
        assert isinstance(net, CenterNet)
        exported: nn.Module = ExportedDetector(net, category_ids, image_size)
    else:
        assert isinstance(net, Classifier)
        exported = ExportedClassifier(net)
    return exported.eval()
