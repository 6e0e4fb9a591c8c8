"""CenterNet ("Objects as Points", Zhou, Wang and Krähenbühl 2019, arXiv:1904.07850): an
object is the peak of a per-class heatmap at its box centre, with its size and the
centre's sub-cell offset regressed at that peak.

Here: a timm backbone's feature maps, a small top-down pyramid (1x1 lateral convs,
nearest-upsample and add, as in FPN, Lin et al. 2017) down to stride 4, and three heads
(class heatmap, size, offset). Training targets, the loss and decoding follow the paper and
its reference code (github.com/xingyizhou/CenterNet): Gaussian peaks with the CornerNet
radius (min IoU 0.7), the penalty-reduced focal loss (alpha 2, beta 4), L1 size loss with
weight 0.1 and L1 offset loss with weight 1, heatmap bias init -2.19 (prior 0.1), and
decoding by 3x3 max-pool peak picking then top-K.

Coordinates: boxes are COCO ``[x, y, w, h]`` (top-left corner, size) in pixels of the
network input; heads work in feature cells of ``stride`` input pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Heatmap head bias: sigmoid(-2.19) ~ 0.1, the paper's prior, so early training is stable.
HEATMAP_BIAS = -2.19
#: CenterNet's loss weights: heatmap 1, size 0.1, offset 1.
SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0
#: Target output stride (the paper's 4); the finest backbone level at or above it is used.
OUTPUT_STRIDE = 4


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _head(cin: int, mid: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(
        nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1)
    )
    nn.init.constant_(head[-1].bias, bias)
    return head


class CenterNet(nn.Module):
    """Backbone + top-down pyramid + CenterNet heads.

    Widths: ``channels`` for the pyramid (64, as the paper's ResNet variant) and
    ``head_channels`` hidden units per head (32, half the paper's 64: on CPU the stride-4
    heads are a large share of the compute, and on ``perf/train/bench_quality.py`` 32 was
    ~10 % faster per image at no loss of mAP after one epoch).

    ``backbone`` a timm ``features_only`` model (it has ``feature_info``); ``mean``/``std``
    the backbone's input normalization (3 values each). ``forward`` takes float32
    ``[N, 3, S, S]`` RGB in 0..1 and returns ``(heatmap_logits [N, C, S/s, S/s],
    size [N, 2, S/s, S/s], offset [N, 2, S/s, S/s])`` with ``s = self.stride`` (size and
    offset in feature cells: width then height, x then y).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels: int = 64,
        head_channels: int = 32,
    ):
        super().__init__()
        reductions = list(backbone.feature_info.reduction())  # type: ignore[operator,union-attr]
        widths = list(backbone.feature_info.channels())  # type: ignore[operator,union-attr]
        keep = [i for i, r in enumerate(reductions) if r >= OUTPUT_STRIDE] or [len(reductions) - 1]
        self.backbone = backbone
        self.levels = keep
        self.stride = int(reductions[keep[0]])
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.lateral = nn.ModuleList(nn.Conv2d(widths[i], channels, 1) for i in keep)
        self.smooth = _conv_bn_relu(channels, channels)
        self.heatmap = _head(channels, head_channels, num_classes, HEATMAP_BIAS)
        self.size = _head(channels, head_channels, 2)
        self.offset = _head(channels, head_channels, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.backbone((images - self.mean) / self.std)
        feats = [feats[i] for i in self.levels]
        x = self.lateral[-1](feats[-1])
        for lateral, feat in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            # size=, not scale_factor=: odd sizes (S not a multiple of 32) still line up.
            x = F.interpolate(x, size=feat.shape[-2:], mode="nearest") + lateral(feat)
        x = self.smooth(x)
        return self.heatmap(x), self.size(x), self.offset(x)


def gaussian_radius(
    height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7
) -> torch.Tensor:
    """CornerNet's radius (Law and Deng 2018, as in CenterNet's reference code, including its
    ``(b + sqrt) / 2`` form): the largest corner shift that keeps IoU >= ``min_overlap``, for
    box sizes ``height``/``width`` (feature cells); same shape as the inputs."""
    hw, s = height * width, height + width
    r1 = (s + torch.sqrt(s**2 - 4 * hw * (1 - min_overlap) / (1 + min_overlap))) / 2
    r2 = (2 * s + torch.sqrt((2 * s) ** 2 - 16 * (1 - min_overlap) * hw)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * s
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * (min_overlap - 1) * hw)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def build_targets(
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    num_classes: int,
    size: tuple[int, int],
    stride: int,
) -> dict[str, torch.Tensor]:
    """CenterNet training targets for a batch.

    ``boxes[i]`` float ``[M_i, 4]`` COCO xywh in input pixels and ``labels[i]`` int64
    ``[M_i]`` class indices of image ``i``; ``size`` the heatmap's ``(H, W)``. Returns
    ``heatmap [N, C, H, W]`` (Gaussian peaks, 1 at each centre cell), and per object (all
    images concatenated, K objects): ``batch``, ``ys``, ``xs`` int64 ``[K]`` (centre cell),
    ``size [K, 2]`` (w, h in cells) and ``offset [K, 2]`` (centre minus its cell, in cells).
    """
    height, width = size
    n = len(boxes)
    batch = torch.cat([torch.full((len(b),), i, dtype=torch.int64) for i, b in enumerate(boxes)])
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).float() / stride
    classes = torch.cat([lab.reshape(-1) for lab in labels]).long()
    centre = all_boxes[:, :2] + all_boxes[:, 2:] / 2
    cell = centre.floor().long()
    cell[:, 0].clamp_(0, width - 1)
    cell[:, 1].clamp_(0, height - 1)
    heatmap = torch.zeros(n * num_classes, height * width)
    if len(classes):
        radius = gaussian_radius(all_boxes[:, 3], all_boxes[:, 2]).floor().clamp(min=0)
        sigma = ((2 * radius + 1) / 6).view(-1, 1, 1)
        dy = (torch.arange(height).view(1, -1, 1) - cell[:, 1].view(-1, 1, 1)).float()
        dx = (torch.arange(width).view(1, 1, -1) - cell[:, 0].view(-1, 1, 1)).float()
        r = radius.view(-1, 1, 1)
        inside = (dy.abs() <= r) & (dx.abs() <= r)  # the reference code's truncated square
        peaks = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * inside
        # Overlapping objects of one class keep the maximum, as the reference code does.
        rows = (batch * num_classes + classes).view(-1, 1).expand(-1, height * width)
        heatmap.scatter_reduce_(0, rows, peaks.view(len(classes), -1), "amax")
    return {
        "heatmap": heatmap.view(n, num_classes, height, width),
        "batch": batch,
        "ys": cell[:, 1],
        "xs": cell[:, 0],
        "size": all_boxes[:, 2:],
        "offset": centre - cell.float(),
    }


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (paper eq. 1; alpha 2, beta 4),
    summed and divided by the number of peaks (at least 1). ``logits`` and ``target`` are
    ``[N, C, H, W]``; computed in float32 with log-sigmoid for stability."""
    logits = logits.float()
    pred = logits.sigmoid()
    pos = target.eq(1).float()
    pos_loss = F.logsigmoid(logits) * (1 - pred) ** 2 * pos
    neg_loss = F.logsigmoid(-logits) * pred**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def centernet_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Heatmap focal loss + 0.1 x L1 size + 1 x L1 offset, the L1 terms averaged over
    objects (the paper's weights); ``targets`` from :func:`build_targets`."""
    heat, size, offset = outputs
    loss = focal_loss(heat, targets["heatmap"].to(heat.device))
    if len(targets["batch"]):
        at = [t.to(heat.device) for t in (targets["batch"], targets["ys"], targets["xs"])]
        pred_size = size[at[0], :, at[1], at[2]].float()
        pred_offset = offset[at[0], :, at[1], at[2]].float()
        loss = loss + SIZE_WEIGHT * F.l1_loss(pred_size, targets["size"].to(heat.device))
        loss = loss + OFFSET_WEIGHT * F.l1_loss(pred_offset, targets["offset"].to(heat.device))
    else:  # keep every head in the graph (DDP expects gradients for all parameters)
        loss = loss + 0 * (size.sum() + offset.sum())
    return loss


def decode(
    heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, stride: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` detections per image from the heads (the paper's section 4): a cell is kept
    when it equals the 3x3 max-pool of the class heatmap (peak picking instead of NMS),
    then the ``k`` highest scores over all classes and cells.

    Returns ``boxes [N, k', 4]`` COCO xywh in input pixels (not clipped), ``scores
    [N, k']`` (sigmoid, descending) and ``classes [N, k']`` int64 class indices, with
    ``k' = min(k, C * H * W)``.
    """
    heat = heat_logits.float().sigmoid()
    n, c, h, w = heat.shape
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = heat.view(n, -1).topk(min(k, c * h * w))
    classes = torch.div(index, h * w, rounding_mode="floor")
    cell = index % (h * w)
    ys = torch.div(cell, w, rounding_mode="floor").float()
    xs = (cell % w).float()
    at = cell.unsqueeze(1).expand(-1, 2, -1)
    wh = size.float().reshape(n, 2, -1).gather(2, at)
    off = offset.float().reshape(n, 2, -1).gather(2, at)
    cx, cy = (xs + off[:, 0]) * stride, (ys + off[:, 1]) * stride
    bw, bh = wh[:, 0] * stride, wh[:, 1] * stride
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, bw, bh], dim=-1)
    return boxes, scores, classes
