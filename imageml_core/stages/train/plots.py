"""Plots logged with a training run: loss and validation-metric curves per epoch, and a
grid of validation images with true and predicted boxes. matplotlib's object API
(``Figure``, no pyplot): no global state, the Agg backend, safe in worker threads."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imageml_core.stages.train.contract import ModelInfo

VAL_PREDICTIONS_FILE = "val_predictions.json"
"""Optional, in a trainer's ``model_dir`` (the built-in trainer writes it): validation
images to draw, a COCO-style document: ``images`` (``id``; the picture either in tar
``shard`` as member ``<key>.jpg``, or at ``file_name``, relative to ``model_dir`` or
absolute), ``annotations`` (true boxes) and ``predictions`` (COCO results with ``score``),
boxes ``[x, y, w, h]`` in pixels of that image, ``category_id`` the dataset's ids."""

GRID_IMAGES = 16
MIN_DRAWN_SCORE = 0.25


def plot_training_curves(
    history: Sequence[Mapping[str, float]], headline: str, path: Path
) -> Path | None:
    """Draw every ``*loss*`` key and ``headline`` per epoch into a PNG at ``path``;
    None when there is no history."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg by default
    from matplotlib.ticker import MaxNLocator

    if not history:
        return None
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for ax, keys in (
        (ax_loss, sorted({k for e in history for k in e if "loss" in k})),
        (ax_metric, [headline]),
    ):
        for key in keys:
            points = [(e["epoch"], e[key]) for e in history if key in e]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    ax_loss.set_title("loss")
    ax_metric.set_title(f"{headline} (validation)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_val_predictions(
    model_dir: Path, info: ModelInfo, path: Path, limit: int = GRID_IMAGES
) -> Path | None:
    """Draw up to ``limit`` images of ``model_dir/val_predictions.json`` (format:
    :data:`VAL_PREDICTIONS_FILE`) with true boxes (green) and predictions scoring at least
    ``MIN_DRAWN_SCORE`` (red, dashed, labelled) into a PNG grid at ``path``; None without
    the file, without images, or for classification."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    source = model_dir / VAL_PREDICTIONS_FILE
    if info.task != "detection" or not source.exists():
        return None
    doc = json.loads(source.read_text())
    images = list(doc.get("images") or [])[:limit] if isinstance(doc, dict) else []
    if not images:
        return None
    names = {int(c["id"]): str(c["name"]) for c in info.categories}
    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(3.5 * cols, 3.5 * rows + 0.5), dpi=100)
    for ax, image in zip(fig.subplots(rows, cols, squeeze=False).flat, images, strict=False):
        ax.imshow(np.asarray(_open_image(model_dir, image)))
        ax.set_title(str(image.get("key") or image.get("file_name") or image["id"]), fontsize=7)
        for ann in doc.get("annotations", []):
            if ann["image_id"] == image["id"]:
                ax.add_patch(Rectangle(ann["bbox"][:2], *ann["bbox"][2:], fill=False, ec="lime"))
        for det in doc.get("predictions", []):
            if det["image_id"] == image["id"] and det["score"] >= MIN_DRAWN_SCORE:
                x, y, w, h = det["bbox"]
                ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="red", ls="--"))
                label = f"{names.get(det['category_id'], det['category_id'])} {det['score']:.2f}"
                ax.text(x, y, label, color="white", fontsize=7, backgroundcolor="red")
    for ax in fig.axes:
        ax.set_axis_off()
    legend = [Patch(ec="lime", fill=False, label="true"), Patch(ec="red", ls="--", fill=False)]
    legend[1].set_label(f"predicted (score >= {MIN_DRAWN_SCORE})")
    fig.legend(handles=legend, loc="lower center", ncols=2)
    fig.tight_layout(rect=(0, 0.5 / (3.5 * rows + 0.5), 1, 1))
    fig.savefig(path)
    return path


def _open_image(model_dir: Path, image: Mapping[str, Any]) -> Any:
    """An RGB PIL image from a ``val_predictions.json`` image entry."""
    import io
    import tarfile

    from PIL import Image

    if image.get("file_name"):
        return Image.open(model_dir / image["file_name"]).convert("RGB")
    with tarfile.open(image["shard"]) as tar:
        member = tar.extractfile(f"{image['key']}.jpg")
        if member is None:
            raise FileNotFoundError(f"{image['key']}.jpg is not a file in {image['shard']}")
        return Image.open(io.BytesIO(member.read())).convert("RGB")
