"""Segmentation predictions: the class of every pixel drawn over the photo, with a legend of the classes
present and each one's share of the pixels.

Pure: the model's ``out`` logits (N, classes, H, W) and the photos in, records out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..analyzers.predictions import class_name
from ..records import SegmentationResult

__all__ = ["segmentation_from_logits", "LEGEND_WIDTH"]

LEGEND_WIDTH = 220  # pixels: room for a class name and its share

_COLORS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [67, 99, 216], [245, 130, 49],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [188, 246, 12], [250, 190, 190],
                    [0, 128, 128], [154, 99, 36], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 117],
                    [128, 128, 128], [255, 215, 180], [230, 190, 255], [255, 250, 200]], dtype=np.uint8)


def _color(index: int) -> tuple[int, int, int]:
    if index < len(_COLORS):
        return tuple(int(v) for v in _COLORS[index])
    rng = np.random.default_rng(index)
    return tuple(int(v) for v in rng.integers(40, 256, 3))


def _legend(width: int, entries: Sequence[tuple[str, float, tuple[int, int, int]]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    row_h = 16
    canvas = Image.new("RGB", (width, max(1, len(entries)) * row_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, share, color) in enumerate(entries):
        y = 2 + i * row_h
        draw.rectangle([4, y + 2, 16, y + 13], fill=color, outline=(0, 0, 0))
        draw.text((22, y + 1), f"{name} {share:.1%}", fill=(0, 0, 0))
    return np.asarray(canvas, dtype=np.uint8)


def segmentation_from_logits(
    logits: torch.Tensor,
    photos: np.ndarray,
    names: Sequence[str],
    categories: Sequence[str],
    *,
    alpha: float = 0.5,
    max_legend: int = 12,
) -> list[SegmentationResult]:
    """One :class:`SegmentationResult` per image.

    Args:
        logits: (N, classes, h, w) class scores; resized (bilinear) to the photos' size if they differ.
        photos: uint8 (N, H, W, 3), the pictures the model saw.
        names: one name per image.
        categories: class names by index (Pascal VOC's 21 for torchvision's segmentation models).
        alpha: opacity of the mask over the photo.
        max_legend: most classes listed in the legend (the largest shares).
    Returns:
        list of :class:`SegmentationResult`, in image order.
    """
    from torchvision.utils import draw_segmentation_masks

    size = photos.shape[1:3]
    scores = logits.detach().float().cpu()
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = torch.nn.functional.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    masks = scores.argmax(dim=1)
    results = []
    for mask, photo, image_name in zip(masks, photos, names):
        counts = torch.bincount(mask.reshape(-1), minlength=scores.shape[1])
        present = [int(c) for c in torch.argsort(counts, descending=True) if counts[c] > 0]
        shares = [float(counts[c]) / mask.numel() for c in present]
        canvas = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)
        boolean = torch.stack([mask == c for c in present])
        drawn = draw_segmentation_masks(canvas, boolean, alpha=alpha, colors=[_color(c) for c in present])
        drawn = drawn.permute(1, 2, 0).contiguous().numpy()
        labels = [class_name(categories, c) for c in present]
        width = max(drawn.shape[1], LEGEND_WIDTH)
        if width > drawn.shape[1]:  # a small input: widen with white so the legend's names fit
            drawn = np.pad(drawn, ((0, 0), (0, width - drawn.shape[1]), (0, 0)), constant_values=255)
        legend = _legend(width, [(n, s, _color(c)) for n, s, c in
                                 zip(labels[:max_legend], shares[:max_legend], present[:max_legend])])
        results.append(SegmentationResult(
            image_name=image_name, mask=mask.numpy().astype(np.int64), classes=tuple(present), names=tuple(labels),
            shares=tuple(shares), image=np.concatenate([drawn, legend], axis=0),
        ))
    return results
