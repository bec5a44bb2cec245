"""Detection predictions: a detector's boxes (and masks, keypoints) drawn on the photo with COCO names.

Pure: output dicts (torchvision's detection API: ``boxes``, ``labels``, ``scores``, and
``masks`` / ``keypoints`` where the model gives them) and the photos in, records out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..analyzers.predictions import class_name
from ..options import DetectionOptions
from ..records import Detections

__all__ = ["detections_from_output", "MAX_SHOWN"]

MAX_SHOWN = 20
_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
            "#008080", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075", "#808080"]


def _drawn(photo: np.ndarray, boxes: torch.Tensor, labels: list[str], colors: list[str],
           masks: torch.Tensor | None, keypoints: torch.Tensor | None) -> np.ndarray:
    from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

    canvas = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)
    if len(boxes) == 0:
        return photo.copy()
    if masks is not None:
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colors)
    canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors=colors, width=2)
    if keypoints is not None:
        canvas = draw_keypoints(canvas, keypoints, colors="#ffff00", radius=2)
    return canvas.permute(1, 2, 0).contiguous().numpy()


def detections_from_output(
    outputs: Sequence[dict[str, torch.Tensor]],
    photos: np.ndarray,
    names: Sequence[str],
    categories: Sequence[str],
    *,
    threshold: float = DetectionOptions.score_threshold,
    max_shown: int = MAX_SHOWN,
) -> list[Detections]:
    """One :class:`Detections` per image from a torchvision detector's eval-mode output.

    Args:
        outputs: one dict per image (``boxes`` (K, 4), ``labels`` (K,), ``scores`` (K,), optional
            ``masks`` (K, 1, H, W) and ``keypoints`` (K, P, 3)), boxes in the photo's pixels.
        photos: uint8 (N, H, W, 3), the pictures the model saw.
        names: one name per image.
        categories: class names by label index (COCO's 91 for torchvision's detectors).
        threshold: lowest score drawn and listed.
        max_shown: most detections drawn per image.
    Returns:
        list of :class:`Detections`, in image order.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} is not a score: give a number from 0 to 1")
    records = []
    for output, photo, image_name in zip(outputs, photos, names):
        scores = output["scores"].detach().float().cpu()
        order = torch.argsort(scores, descending=True)
        keep = order[scores[order] >= threshold][:max_shown]
        boxes = output["boxes"].detach().float().cpu()[keep]
        labels = [int(v) for v in output["labels"].detach().cpu()[keep]]
        label_names = [class_name(categories, v) for v in labels]
        kept_scores = [float(scores[i]) for i in keep]
        masks = output.get("masks")
        masks = masks.detach().cpu()[keep][:, 0] > 0.5 if masks is not None and len(keep) else None
        keypoints = output.get("keypoints")
        keypoints = keypoints.detach().float().cpu()[keep][..., :2] if keypoints is not None and len(keep) else None
        colors = [_PALETTE[v % len(_PALETTE)] for v in labels]
        image = _drawn(photo, boxes, [f"{n} {s:.2f}" for n, s in zip(label_names, kept_scores)], colors, masks,
                       keypoints)
        best = tuple((class_name(categories, int(output["labels"][i])), float(scores[i])) for i in order[:5])
        records.append(Detections(
            image_name=image_name, boxes=boxes.numpy().astype(np.float32), labels=tuple(labels),
            names=tuple(label_names), scores=tuple(kept_scores), threshold=threshold,
            has_masks="masks" in output, has_keypoints="keypoints" in output, best=best, image=image,
        ))
    return records
