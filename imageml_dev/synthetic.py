"""A small synthetic labelled image set: coloured shapes on noisy backgrounds.

Each image holds 1-4 shapes of three classes (circle, square, triangle) with their boxes,
so later stages have something real to learn and evaluate. Annotations come in both forms
the pipeline accepts: a Label Studio export (percent coordinates) and COCO (pixels,
``[x, y, width, height]`` from the top-left corner, ids from 1).
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from imageml_core.annotations.config import label_config_for

CLASSES = ("circle", "square", "triangle")
#: The labelling config of the synthetic Label Studio export (one RectangleLabels control).
LABEL_CONFIG = label_config_for(CLASSES, kind="rectangle")


@dataclass(frozen=True)
class Box:
    """A box in pixels: top-left corner and size."""

    label: str
    x: float
    y: float
    width: float
    height: float


def render_image(rng: random.Random, width: int, height: int) -> tuple[Image.Image, list[Box]]:
    """An RGB ``width`` x ``height`` image with 1-4 shapes on noise, and their boxes (pixels,
    top-left corner, size = shape size + 1 as drawn); the same ``rng`` state gives the same
    image."""
    base = tuple(rng.randint(0, 90) for _ in range(3))
    img = Image.effect_noise((width, height), rng.uniform(10, 30)).convert("RGB")
    img = Image.blend(img, Image.new("RGB", (width, height), base), 0.7)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    boxes: list[Box] = []
    for _ in range(rng.randint(1, 4)):
        label = rng.choice(CLASSES)
        size = rng.randint(min(width, height) // 8, min(width, height) // 3)
        x0 = rng.randint(0, width - size - 1)
        y0 = rng.randint(0, height - size - 1)
        colour = tuple(rng.randint(120, 255) for _ in range(3))
        if label == "circle":
            draw.ellipse([x0, y0, x0 + size, y0 + size], fill=colour)  # type: ignore[arg-type]
        elif label == "square":
            draw.rectangle([x0, y0, x0 + size, y0 + size], fill=colour)  # type: ignore[arg-type]
        else:
            draw.polygon(
                [(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=colour
            )  # type: ignore[arg-type]
        boxes.append(Box(label, float(x0), float(y0), float(size + 1), float(size + 1)))
    return img.filter(ImageFilter.GaussianBlur(0.6)), boxes


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def label_studio_task(
    task_id: int, image_ref: str, width: int, height: int, boxes: list[Box]
) -> dict:
    """A Label Studio task for ``image_ref`` with one annotation (id ``task_id``): a
    ``rectanglelabels`` result per box, pixel boxes converted to percent of ``width`` x
    ``height``."""
    return {
        "id": task_id,
        "data": {"image": image_ref},
        "annotations": [
            {
                "id": task_id,
                "result": [
                    {
                        "id": f"t{task_id}r{i}",
                        "type": "rectanglelabels",
                        "from_name": "label",
                        "to_name": "image",
                        "original_width": width,
                        "original_height": height,
                        "image_rotation": 0,
                        "value": {
                            "x": 100.0 * b.x / width,
                            "y": 100.0 * b.y / height,
                            "width": 100.0 * b.width / width,
                            "height": 100.0 * b.height / height,
                            "rotation": 0,
                            "rectanglelabels": [b.label],
                        },
                    }
                    for i, b in enumerate(boxes)
                ],
            }
        ],
    }


def coco_document(images: list[tuple[str, int, int, list[Box]]]) -> dict:
    """A COCO document for ``(file name, width, height, boxes)`` entries: image and
    annotation ids from 1 in input order, category ids from 1 in :data:`CLASSES` order,
    boxes as pixel ``[x, y, width, height]``, ``iscrowd`` 0."""
    cats = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    cat_id = {c["name"]: c["id"] for c in cats}
    doc: dict = {"images": [], "annotations": [], "categories": cats}
    ann_id = 1
    for image_id, (name, w, h, boxes) in enumerate(images, start=1):
        doc["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for b in boxes:
            doc["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat_id[b.label],
                    "bbox": [b.x, b.y, b.width, b.height],
                    "area": b.width * b.height,
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    return doc


def generate_dataset(
    out_dir: Path,
    *,
    images: int = 24,
    zip_images: int = 5,
    seed: int = 7,
    size: tuple[int, int] = (640, 480),
    include_bad: bool = True,
) -> list[Path]:
    """Write a raw-prefix tree under ``out_dir``; returns the files written (relative).

    Layout: ``shapes-ls/`` (images + Label Studio ``annotations.json``), ``shapes-coco/``
    (images + COCO ``annotations.json``), ``shapes-archive.zip`` (``zip_images`` images),
    and with ``include_bad`` a truncated JPEG and a text file posing as an image, which
    ingest must quarantine.
    """
    rng = random.Random(seed)
    width, height = size
    written: list[Path] = []

    def put(rel: str, data: bytes) -> None:
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(Path(rel))

    half = images // 2
    ls_tasks, coco_images = [], []
    for i in range(images):
        img, boxes = render_image(rng, width, height)
        folder = "shapes-ls" if i < half else "shapes-coco"
        name = f"img_{i:04d}.jpg"
        put(f"{folder}/{name}", _jpeg(img))
        if folder == "shapes-ls":
            ls_tasks.append(label_studio_task(len(ls_tasks) + 1, name, width, height, boxes))
        else:
            coco_images.append((name, width, height, boxes))
    put("shapes-ls/annotations.json", (json.dumps(ls_tasks, indent=1) + "\n").encode())
    put(
        "shapes-coco/annotations.json",
        (json.dumps(coco_document(coco_images), indent=1) + "\n").encode(),
    )
    if zip_images:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(zip_images):
                img, _ = render_image(rng, width, height)
                info = zipfile.ZipInfo(f"archive/zip_{i:04d}.jpg", date_time=(2026, 1, 1, 0, 0, 0))
                zf.writestr(info, _jpeg(img))
        put("shapes-archive.zip", buf.getvalue())
    if include_bad:
        img, _ = render_image(rng, width, height)
        good = _jpeg(img)
        put("bad/truncated.jpg", good[: len(good) // 3])
        put("bad/not-an-image.jpg", b"this is a text file with an image extension\n")
    return written
