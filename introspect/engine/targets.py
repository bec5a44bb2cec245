"""What a CAM explains: targets as small objects, each with one job.

A target scores one image's model output, pytorch-grad-cam's convention: ``target(output)`` is
called on that image's own output (a classifier's or video model's logits row, a detector's dict
of detections, a segmenter's (C, H, W) class scores) and returns the scalar whose gradient the CAM
follows. The same objects go to pytorch-grad-cam for the methods it runs (Score-CAM,
Ablation-CAM, ...), which call them the same way.

:func:`target_scores` turns per-image lists of targets into the (N, k) score tensor that
:func:`introspect.engine.forward.gradients` takes (:meth:`introspect.engine.forward.ForwardPass.gradients` does
both). A new target is one class with a ``__call__``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ArgumentError
from ..hooks import first_tensor

__all__ = ["Target", "ClassScore", "TrueLabel", "FinerContrast", "BoxScore", "PixelClass", "per_image_outputs",
           "target_scores", "as_targets"]


class Target(Protocol):
    """Anything that scores one image's output: ``target(output) -> scalar tensor``."""

    def __call__(self, output: Any) -> torch.Tensor: ...


def _class(output: torch.Tensor, index: int) -> torch.Tensor:
    """Column ``index`` of a logits row (C,) or of a batch of them (B, C)."""
    return output[..., index]


@dataclass(frozen=True)
class ClassScore:
    """A class's score (its logit): a classifier's or a video model's class (pytorch-grad-cam's
    ``ClassifierOutputTarget``)."""

    index: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return _class(output, self.index)

    @classmethod
    def per_image(cls, classes: torch.Tensor | Sequence[Sequence[int]]) -> list[list[ClassScore]]:
        """The targets of ``classes`` (N, k): class ``classes[n][j]`` is image n's target j."""
        rows = classes.tolist() if isinstance(classes, torch.Tensor) else classes
        return [[cls(int(c)) for c in row] for row in rows]


@dataclass(frozen=True)
class TrueLabel(ClassScore):
    """The image's labelled class (the audit's, the pointing game's and the training probe's target)."""

    @classmethod
    def per_image(cls, labels: torch.Tensor | Sequence[int],  # type: ignore[override]
                  logits: torch.Tensor | None = None) -> list[list[TrueLabel]]:
        """One target per image: its label, or where it has none (a negative label) its top-1 class in ``logits``.

        Raises:
            ArgumentError: an unlabelled image and no ``logits``.
        """
        values = labels.reshape(-1).tolist() if isinstance(labels, torch.Tensor) else [int(v) for v in labels]
        if logits is None and any(v < 0 for v in values):
            raise ArgumentError("an image without a label (a negative label) needs logits= to take its top-1 class",
                                parameter="logits")
        top1 = logits.argmax(dim=-1).tolist() if logits is not None else []
        return [[cls(int(v) if v >= 0 else int(top1[n]))] for n, v in enumerate(values)]


@dataclass(frozen=True)
class FinerContrast:
    """FinerCAM's target: a class's score against its most similar classes, each weighted by its probability
    (pytorch-grad-cam's ``FinerWeightedTarget``)."""

    index: int
    comparisons: tuple[int, ...]
    alpha: float = 1.0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        main = _class(output, self.index)
        probabilities = torch.softmax(output, dim=-1)
        weights = [_class(probabilities, c) for c in self.comparisons]
        numerator = sum(w * (main - self.alpha * _class(output, c)) for w, c in zip(weights, self.comparisons))
        return numerator / (sum(weights) + 1e-9)

    @classmethod
    def nearest(cls, target: ClassScore, output: torch.Tensor, count: int = 3) -> FinerContrast:
        """``target``'s class against the ``count`` classes whose scores in ``output`` (one image's logits) are
        closest to its own (the :class:`~introspect.analyzers.cam.CamMethod` target factory of FinerCAM)."""
        row = output.detach().cpu()
        nearest = torch.argsort((row - row[target.index]).abs())
        return cls(target.index, tuple(int(c) for c in nearest if int(c) != target.index)[:count], alpha=1.0)


@dataclass(frozen=True)
class BoxScore:
    """A detection's box score (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` with this one box): among the
    output's boxes, the one of largest IoU with ``box``; if that IoU exceeds ``iou_threshold`` and its label is
    ``label``, IoU + its score, else 0."""

    box: tuple[float, float, float, float]  # (x1, y1, x2, y2) in the input image's pixels
    label: int
    score: float = 0.0  # the explained detection's own score (an R-CNN's fast path finds its RoI by it)
    iou_threshold: float = 0.5

    def __call__(self, output: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from torchvision.ops import box_iou

        boxes, labels, scores = output["boxes"], output["labels"], output["scores"]
        if not len(boxes):
            return torch.zeros((), dtype=boxes.dtype, device=boxes.device)
        reference = torch.tensor([self.box], device=boxes.device, dtype=boxes.dtype)
        ious = box_iou(reference, boxes)
        index = ious.argmax()
        if ious[0, index] > self.iou_threshold and labels[index] == self.label:
            return ious[0, index] + scores[index]
        return torch.zeros((), dtype=boxes.dtype, device=boxes.device)


@dataclass(frozen=True)
class PixelClass:
    """A segmentation class: its score summed over the pixels predicted as that class (pytorch-grad-cam's
    ``SemanticSegmentationTarget`` with the class's own mask)."""

    index: int
    class_map: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """The image's (H, W) predicted classes (its targets share one); None: the argmax of the output."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        class_map = output.detach().argmax(0) if self.class_map is None else self.class_map  # output: (C, H, W)
        mask = (class_map.to(output.device) == self.index).to(output.dtype)
        return (output[self.index] * mask).sum()


def per_image_outputs(output: Any) -> list[Any]:
    """A model's output as each image's own: a detector's list of dicts as it is, else the rows of its first
    tensor (a classifier's logits, a segmenter's ``'out'`` maps)."""
    if isinstance(output, (list, tuple)) and output and not isinstance(output[0], torch.Tensor):
        return list(output)
    return list(first_tensor(output).unbind(0))


def as_targets(targets: Sequence[Sequence[Target]] | torch.Tensor) -> list[list[Target]]:
    """Per-image lists of targets; an (N, k) tensor of class indices reads as :class:`ClassScore` targets."""
    if isinstance(targets, torch.Tensor):
        return ClassScore.per_image(targets)
    return [list(row) for row in targets]


def target_scores(targets: Sequence[Sequence[Target]], output: Any) -> torch.Tensor:
    """(N, k) scores: ``targets[n][j]`` called on image n's output, 0 where image n has fewer than k targets.

    Computed with autograd on (the caller may be under ``torch.no_grad()``): the scores extend the graph the
    pass recorded, and :func:`introspect.engine.forward.gradients` takes their gradients.

    Raises:
        ArgumentError: not one list of targets per image.
    """
    k = max((len(row) for row in targets), default=0)
    with torch.enable_grad():
        outputs = per_image_outputs(output)
        if len(targets) != len(outputs):
            raise ArgumentError(f"targets= has {len(targets)} lists for {len(outputs)} images: give one per image",
                                parameter="targets")
        rows = [[target(out).reshape(()) for target in row] for row, out in zip(targets, outputs)]
        like = next((value for row in rows for value in row), None)
        if like is None:  # no target at all
            tensor = first_tensor(outputs[0]) if outputs else torch.zeros(())
            return torch.zeros((len(outputs), 0), dtype=tensor.dtype, device=tensor.device)
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        return torch.stack([torch.stack(row + [zero] * (k - len(row))) for row in rows])
