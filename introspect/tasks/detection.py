"""Object detection (torchvision Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite): detections and CAMs.

:func:`detect` runs a detector once and returns, per image, a :class:`Detections` record: boxes
in the input image's pixels, labels, names, scores, masks and keypoints where the model gives
them, the image with them drawn, and a Markdown table.

:func:`detection_cams` explains the top-k detections of each image, all of them from one forward
pass and one batched backward. The target of a detection is pytorch-grad-cam's
``FasterRCNNBoxScoreTarget`` with that detection as the reference box: among the model's output
boxes, the one of largest IoU with the reference; if that IoU exceeds ``iou_threshold`` and its
label is the reference's, the target is IoU + its score, else 0. Gradients of the targets are
taken with respect to the feature maps the detector hands its heads (``backbone``: every FPN
level, or SSD's feature maps), and the CAM is the mean of the per-level maps (see
:func:`introspect.engine.cam.scaled_maps`). Only the heads are recorded and differentiated; nothing is
written to ``.grad``. The records also carry the detections, so one call serves both.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.cam import CAM_METHODS, scaled_maps, single_pass_methods
from ..engine.forward import FEATURE_MAPS, ForwardPass, run_forward
from ..engine.targets import BoxScore
from ..errors import IntrospectError, IntrospectWarning, TargetError, UsageError
from ..hooks import inspecting
from ..records import CamMap, CamResult, Detections, Subject
from .base import InputRecipe
from .common import HeadsTask, TaskImages, task_images

__all__ = ["DEFAULT_SCORE_THRESHOLD", "DEFAULT_IOU_THRESHOLD", "MAX_DRAWN", "DRAW_SIDE",
           "COCO_PERSON_SKELETON", "coco_categories",
           "detect", "detection_cams", "draw_detections", "box_targets", "DetectionPass", "detection_pass",
           "detection_cam_results", "box_cam_maps", "DetectionTask"]

DEFAULT_SCORE_THRESHOLD = 0.5
"""Detections scoring less are not shown or explained."""

MAX_DRAWN = 25
"""At most this many detections (the best) are drawn on an image; the record and table keep them all."""

DEFAULT_IOU_THRESHOLD = 0.5
"""A box matches a reference detection when their IoU exceeds this (pytorch-grad-cam's default)."""

COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12), (11, 12),
    (11, 13), (13, 15), (12, 14), (14, 16))
"""Pairs of COCO's 17 person keypoints joined when they are drawn."""

_PROPOSALS, _PREDICTIONS = "rpn", "roi_heads.box_predictor"  # raw outputs the RoI fast path reads

def coco_categories(person_only: bool = False) -> tuple[str, ...]:
    """COCO's 91 detection category names (index = label; ``'N/A'`` for unused ids), or background + person."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, KeypointRCNN_ResNet50_FPN_Weights

    weights = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1 if person_only else FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    return tuple(weights.meta["categories"])


def _name(categories: Sequence[str], label: int) -> str:
    return categories[label] if 0 <= label < len(categories) else f"class {label}"


def _model_and_categories(model: Any, categories: Sequence[str] | None) -> tuple[nn.Module, Sequence[str] | None]:
    module = model if isinstance(model, nn.Module) else getattr(model, "model", model)  # a LoadedModel
    if categories is None and module is not model:
        categories = getattr(model, "categories", None) or None
    if not isinstance(module, nn.Module):
        raise UsageError(f"expected a torch.nn.Module detector, got {type(model).__name__}")
    return module, categories


def _resolve_targets(targets: Sequence[int | str] | None, categories: Sequence[str]) -> set[int] | None:
    """Class names or labels to explain -> labels; an unknown one is a one-line TargetError."""
    if targets is None:
        return None
    labels: set[int] = set()
    lowered = {name.lower(): i for i, name in enumerate(categories)}
    for target in targets:
        if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            key = target.strip().lower()
            if key not in lowered or key in {"n/a", "__background__"}:
                shown = ", ".join(n for n in categories if n not in {"N/A", "__background__"})[:200]
                raise TargetError(f"unknown class {target!r} for this detector: targets= takes its category names "
                                  f"({shown}, ...) or labels 1-{len(categories) - 1}")
            labels.add(lowered[key])
        else:
            label = int(target)
            if not 0 < label < max(len(categories), 2):
                raise TargetError(f"label {label} is out of range for this detector: targets= takes labels "
                                  f"1-{len(categories) - 1} or category names")
            labels.add(label)
    return labels


DRAW_SIDE = 640
"""Pixels: a photo whose longer side is shorter is drawn enlarged (by a whole factor) so its boxes and labels are
crisp in TensorBoard."""


def draw_detections(photo: np.ndarray, boxes: np.ndarray, names: Sequence[str], scores: np.ndarray,
                    labels: np.ndarray, masks: np.ndarray | None = None,
                    keypoints: np.ndarray | None = None,
                    colors: Sequence[tuple[int, int, int]] | None = None, tags: bool = True) -> np.ndarray:
    """The photo with masks (alpha 0.5), boxes labelled ``name score`` on filled tags and keypoints drawn; uint8
    HWC, enlarged by a whole factor where its longer side is under :data:`DRAW_SIDE`.

    Detections come best first; only the first :data:`MAX_DRAWN` are drawn, each class in its own colour
    (``colors``: one per detection, default :func:`~introspect.drawing.distinct_colors` of the labels).
    ``tags=False`` draws the boxes without their labels (a CAM panel's caption says them).
    """
    from torchvision.utils import draw_keypoints, draw_segmentation_masks

    from ..drawing import distinct_colors, draw_boxes, enlarge

    if colors is None:
        colors = distinct_colors([int(label) for label in labels])
    boxes, names, scores, labels = boxes[:MAX_DRAWN], names[:MAX_DRAWN], scores[:MAX_DRAWN], labels[:MAX_DRAWN]
    colors = list(colors)[:MAX_DRAWN]
    masks = masks[:MAX_DRAWN] if masks is not None else None
    keypoints = keypoints[:MAX_DRAWN] if keypoints is not None else None
    height, width = photo.shape[:2]
    k = max(1, -(-DRAW_SIDE // max(height, width, 1))) if max(height, width) < DRAW_SIDE else 1
    photo = enlarge(photo, min(height, width) * k) if k > 1 else np.ascontiguousarray(photo)
    if not len(scores):
        return photo
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).contiguous()
    if masks is not None and len(masks):
        big = np.repeat(np.repeat(masks > 0.5, k, axis=1), k, axis=2)[:, :photo.shape[0], :photo.shape[1]]
        image = draw_segmentation_masks(image, torch.from_numpy(big), alpha=0.5, colors=colors)
    line = max(2, round(max(photo.shape[:2]) / 200))
    if keypoints is not None and len(keypoints):
        skeleton = list(COCO_PERSON_SKELETON) if keypoints.shape[1] == 17 else None
        image = draw_keypoints(image, torch.from_numpy(keypoints[..., :2] * k).float(), connectivity=skeleton,
                               colors=(255, 255, 0), radius=line, width=line,
                               visibility=torch.from_numpy(keypoints[..., 2] > 0))
    drawn = image.permute(1, 2, 0).contiguous().numpy()
    return draw_boxes(drawn, np.asarray(boxes, dtype=np.float64) * k,
                      [f"{n} {s:.2f}" if tags else "" for n, s in zip(names, scores.tolist())], colors,
                      line_width=line)


def _detections(output: dict[str, torch.Tensor], name: str, photo: np.ndarray, score_threshold: float,
                categories: Sequence[str] | None) -> Detections:
    scores = output["scores"].detach().float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= score_threshold]
    boxes = output["boxes"].detach().float().cpu()[order].numpy().astype(np.float32)
    labels = output["labels"].detach().cpu()[order].numpy().astype(np.int64)
    if categories is None:
        categories = coco_categories(person_only="keypoints" in output)
    names = tuple(_name(categories, int(label)) for label in labels)
    masks = keypoints = None
    if "masks" in output:
        masks = output["masks"].detach().float().cpu()[order][:, 0].numpy().astype(np.float32)
    if "keypoints" in output:
        keypoints = output["keypoints"].detach().float().cpu()[order].numpy().astype(np.float32)
    score_values = scores[order].numpy().astype(np.float32)
    return Detections(image_name=name, image_size=tuple(photo.shape[:2]), boxes=boxes, labels=labels, names=names,
                      scores=score_values, score_threshold=float(score_threshold), masks=masks, keypoints=keypoints,
                      image=lambda: draw_detections(photo, boxes, names, score_values, labels, masks, keypoints))


def _check_threshold(score_threshold: float) -> None:
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise UsageError(f"score_threshold={score_threshold} is outside [0, 1]: pass a score such as 0.5")


def _lowered_thresholds(module: nn.Module, score_threshold: float) -> list[tuple[object, str, object]]:
    """The detector's own score cut-offs (``score_thresh`` of its heads) lowered to ``score_threshold`` for one pass."""
    return [(m, "score_thresh", float(score_threshold)) for m in module.modules()
            if isinstance(getattr(m, "score_thresh", None), float) and m.score_thresh > score_threshold]


def _run(module: nn.Module, tensors: Sequence[torch.Tensor], layer: str | None, leaves: bool, record: bool,
         score_threshold: float, capture: Sequence[str] = (), raw: Sequence[str] = ()) -> ForwardPass:
    """One pass of the detector over a list of images; ``leaves``: the features its heads read (or ``layer``'s)."""
    try:
        forward = run_forward(module, list(tensors), capture=capture,
                              grad_layer=(layer or FEATURE_MAPS) if leaves else None, record=record, raw=raw,
                              canvas=True, settings=_lowered_thresholds(module, score_threshold),
                              names={"capture": "layers", "grad_layer": "layer"})
    except IntrospectError:
        raise
    except TypeError as error:  # a model that takes one batched tensor, not a list of images
        first = str(error).splitlines()[0][:80] if str(error) else ""
        raise UsageError(f"{type(module).__name__} does not take a list of images as torchvision detectors do "
                         f"({error.__class__.__name__}: {first}): is it a detector?") from error
    output = forward.output
    if not (isinstance(output, (list, tuple)) and all(isinstance(o, dict) and "boxes" in o for o in output)):
        raise UsageError(f"{type(module).__name__} does not return detections (a list of dicts with 'boxes', "
                         "'labels', 'scores' per image): use it with the classification or segmentation analyzers")
    return forward


def detect(
    model: nn.Module,
    images: Any,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    categories: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
) -> list[Detections]:
    """Run a detector once; one :class:`Detections` per image, detections scoring ``score_threshold`` or more.

    Args:
        model: a torchvision-style detector (``model(list of (3, H, W) tensors in [0, 1])`` -> list of dicts),
            or a loaded model carrying ``.model`` and ``.categories``; it comes back untouched.
        images: a (N, 3, H, W) / (3, H, W) tensor in [0, 1], a path, a PIL image, an (H, W, 3) array, or a list.
        score_threshold: the lowest score shown; the detector's own cut-off (``score_thresh``) is lowered to it
            for this call where it is higher (random weights score about 1 / classes).
        categories: class names by label; None: COCO's (background + person for keypoint models).
        names: one name per image (default: file stems, or image0, image1, ...).
    Returns:
        One record per image.
    """
    module, categories = _model_and_categories(model, categories)
    found = detection_pass(module, task_images(images, names), score_threshold=score_threshold, categories=categories)
    found.release()
    return found.detections


def box_targets(detections: Sequence[Detections], chosen: Sequence[Sequence[int]],
                iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> list[list[BoxScore]]:
    """The targets of the chosen detections of each image: a :class:`~introspect.engine.targets.BoxScore` each
    (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` with that detection as the reference box)."""
    return [[BoxScore(tuple(float(v) for v in d.boxes[i]), int(d.labels[i]), float(d.scores[i]), iou_threshold)
             for i in picks] for d, picks in zip(detections, chosen)]


def _box_path(module: nn.Module) -> nn.Module | None:
    """The R-CNN box path (torchvision ``RoIHeads``: ``box_roi_pool``, ``box_head``, ``box_predictor``,
    ``box_coder``, fed by an ``rpn``), when the model has one."""
    roi = getattr(module, "roi_heads", None)
    parts = ("box_roi_pool", "box_head", "box_predictor", "box_coder")
    if not isinstance(roi, nn.Module) or not all(getattr(roi, p, None) is not None for p in parts):
        return None
    return roi if isinstance(getattr(module, "rpn", None), nn.Module) else None


def _box_linears(roi: nn.Module) -> tuple[str, ...]:
    """Names (in the model) of the linear layers of an R-CNN's box head and predictor: the RoI fast path reads
    the rows they gave in the pass instead of computing them again."""
    prefix = _PREDICTIONS.rsplit(".", 1)[0]  # the RoI heads' name in the model
    return tuple(f"{prefix}.{name}" for name, m in roi.named_modules()
                 if isinstance(m, nn.Linear) and name.split(".")[0] in ("box_head", "box_predictor"))


class _KnownRows(torch.autograd.Function):
    """A linear layer's output rows, already computed by the pass, as a step of the graph: its backward is the
    layer's (``grad @ weight``), its forward only hands the rows on."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return rows.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None


class _LinearRowsFromPass(torch.overrides.TorchFunctionMode):
    """While the RoI fast path re-runs the box head on the explained RoIs, each linear layer whose rows the pass
    kept returns those rows (:class:`_KnownRows`) instead of multiplying by its weight again: an R-CNN's first box
    layer (12544 x 1024 for torchvision's) is read once, by the backward, not twice. The rows are the pass's own
    values for those RoIs (the box head treats RoIs one by one)."""

    def __init__(self, rows: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.rows = rows  # id(weight) -> (K, out) rows

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            input, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            rows = self.rows.get(id(weight))
            if rows is not None and rows.shape[:-1] == input.shape[:-1]:
                del self.rows[id(weight)]  # the pass kept a layer's first call: a second one is computed
                return _KnownRows.apply(input, weight, rows)
        return func(*args, **kwargs)


def _feeds(module: nn.Module, roi: nn.Module) -> str:
    """Name of the direct child whose output the box path reads (torchvision: ``backbone``)."""
    for name, child in module.named_children():
        if child is getattr(module, "backbone", None):
            return name
    return ""


def _roi_box_gradients(roi: nn.Module, forward: ForwardPass, targets: Sequence[Sequence[BoxScore]],
                       original_sizes: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Gradients of :class:`~introspect.engine.targets.BoxScore` targets of an R-CNN (the fast path of
    ``forward.gradients(targets)``), through its box head on the explained RoIs only.

    Each detection comes from one proposal (RoI) and one class; the box head treats RoIs independently, so
    its score and box, and hence the target (IoU with the reference + score), depend on that RoI's row alone:
    the same values and gradients as through the whole graph, without a dense backward over every RoI.
    The feature maps are copied once per target (k copies of the batch), each target reads its own copy,
    and one plain backward of the summed targets gives every target's gradients: (k, N, C, h, w) per level.
    """
    import torch.nn.functional as F
    from torchvision.models.detection.transform import resize_boxes
    from torchvision.ops import box_iou, clip_boxes_to_image

    proposals = list(forward.raw[_PROPOSALS][0])
    class_logits, box_regression = forward.raw[_PREDICTIONS]
    _, resized = forward.canvas
    counts = [len(p) for p in proposals]
    logits_list, regression_list = class_logits.split(counts), box_regression.split(counts)
    n_images, k = len(targets), max(len(row) for row in targets)
    # the RoI row behind each explained detection: the row whose decoded box and score are the detection's
    selected = [proposals[0][:0]] * (k * n_images)  # slot j * N + n: target j of image n (or no RoI)
    row_of: dict[int, int] = {}  # slot -> its RoI's row among the pass's RoIs of every image
    offsets = [sum(counts[:n]) for n in range(n_images)]
    for n, row_targets in enumerate(targets):
        decoded = clip_boxes_to_image(roi.box_coder.decode(regression_list[n], [proposals[n]]), resized[n])
        probs = F.softmax(logits_list[n], -1)
        for j, target in enumerate(row_targets):
            candidates = resize_boxes(decoded[:, target.label], resized[n], original_sizes[n])
            reference = torch.tensor(target.box, dtype=candidates.dtype, device=candidates.device)
            error = (candidates - reference).abs().sum(1) + (probs[:, target.label] - float(target.score)).abs()
            row = int(error.argmin())
            selected[j * n_images + n] = proposals[n][row:row + 1]
            row_of[j * n_images + n] = offsets[n] + row
    activations = forward.maps()
    copies = {name: a[None].expand(k, *a.shape).reshape(k * a.shape[0], *a.shape[1:]).clone().requires_grad_()
              for name, a in activations.items()}
    slots = [slot for slot, rois in enumerate(selected) if len(rois)]
    image_of = [slot % n_images for slot in slots]
    chosen = [targets[n][slot // n_images] for slot, n in zip(slots, image_of)]
    labels = torch.tensor([t.label for t in chosen], device=class_logits.device)
    pass_rows = torch.tensor([row_of[slot] for slot in slots], dtype=torch.long)
    linear_layers = dict(roi.named_modules())
    prefix = _PREDICTIONS.rsplit(".", 1)[0] + "."
    known = {id(linear_layers[name[len(prefix):]].weight): output[pass_rows.to(output.device)].detach()
             for name, output in forward.raw.items() if name.startswith(prefix) and name != _PREDICTIONS
             and isinstance(output, torch.Tensor)}
    with torch.enable_grad():
        pooled = roi.box_roi_pool(copies, selected, list(resized) * k)
        with _LinearRowsFromPass(known):
            logits, regression = roi.box_predictor(roi.box_head(pooled))
        rows = torch.arange(len(slots), device=logits.device)
        probs = F.softmax(logits, -1)[rows, labels]
        boxes = roi.box_coder.decode(regression, selected)[rows, labels]  # (K, 4): each row's box of its class
        out = torch.stack([resize_boxes(clip_boxes_to_image(boxes[i:i + 1], resized[n]), resized[n],
                                        original_sizes[n])[0] for i, n in enumerate(image_of)])
        reference = torch.tensor([t.box for t in chosen], dtype=out.dtype, device=out.device)
        thresholds = torch.tensor([t.iou_threshold for t in chosen], dtype=out.dtype, device=out.device)
        iou = box_iou(reference, out).diagonal()  # each reference against its own detection's recomputed box
        total = ((iou + probs) * (iou > thresholds)).sum()
        if not total.requires_grad:
            return {name: torch.zeros((k, *a.shape), dtype=a.dtype, device=a.device) for name, a in activations.items()}
        names = list(copies)
        grads = torch.autograd.grad(total, [copies[name] for name in names], allow_unused=True,
                                    materialize_grads=True)
    return {name: g.reshape(k, *activations[name].shape) for name, g in zip(names, grads)}


@dataclass
class DetectionPass:
    """One detector forward pass: its feature maps (made gradient leaves when a CAM needs them), the
    detections of every image, and what the RoI fast path needs."""

    forward: ForwardPass
    batch: TaskImages
    detections: list[Detections]
    categories: Sequence[str]
    score_threshold: float
    gradients: bool
    roi: nn.Module | None = None
    layer: str | None = None

    def release(self) -> None:
        """Drop the recorded graph and the feature maps."""
        self.forward.release()


def detection_pass(module: nn.Module, batch: TaskImages, *, methods: Sequence[str] = (), layer: str | None = None,
                   score_threshold: float = DEFAULT_SCORE_THRESHOLD, categories: Sequence[str] | None = None,
                   capture: Sequence[str] = (), restrict_to_rois: bool = True) -> DetectionPass:
    """Run a detector once over ``batch``: the detections, the layers in ``capture``, and (for ``methods``) the
    feature maps the heads read as gradient leaves.

    R-CNN models with a gradient method keep the forward unrecorded (the box head is re-run on the explained
    RoIs only, see :func:`detection_cam_results`); other detectors record their heads.
    """
    _check_threshold(score_threshold)
    needs_grad = any(CAM_METHODS[m].uses_gradients for m in methods)
    if needs_grad and torch.is_inference_mode_enabled():
        raise UsageError("gradient CAM methods cannot run inside torch.inference_mode(): call detection_cams outside "
                         "it, or use methods='eigencam'")
    roi = _box_path(module) if restrict_to_rois and needs_grad and layer is None else None
    forward = _run(module, batch.tensors, layer, bool(methods), needs_grad and roi is None, score_threshold,
                   capture=capture, raw=(_PROPOSALS, _PREDICTIONS, *_box_linears(roi)) if roi is not None else ())
    cats = categories if categories is not None else coco_categories(person_only="keypoints" in forward.output[0])
    detections = [_detections(out, name, photo, score_threshold, cats)
                  for out, name, photo in zip(forward.output, batch.names, batch.photos)]
    return DetectionPass(forward=forward, batch=batch, detections=detections, categories=cats,
                         score_threshold=score_threshold, gradients=needs_grad, roi=roi, layer=layer)


def _box_gradients(module: nn.Module, found: DetectionPass, chosen: Sequence[Sequence[int]],
                   iou_threshold: float) -> tuple[ForwardPass, dict[str, torch.Tensor] | None]:
    """The pass the maps read and the gradients of the chosen detections' box-score targets (one backward)."""
    forward, roi = found.forward, found.roi
    k = max((len(c) for c in chosen), default=0)
    if not (found.gradients and k):
        return forward, None
    sizes = [tuple(p.shape[:2]) for p in found.batch.photos]
    box_scores = box_targets(found.detections, chosen, iou_threshold)
    if roi is not None and forward.canvas is not None and forward.layer == _feeds(module, roi):
        if any(m.training for m in roi.modules()):
            with inspecting(roi):  # eval mode for the box path, put back after
                return forward, _roi_box_gradients(roi, forward, box_scores, sizes)
        # no hook, no mode change, nothing written to .grad: nothing to put back
        return forward, _roi_box_gradients(roi, forward, box_scores, sizes)
    if roi is not None:  # the features found are not what the box head reads: the whole graph
        forward = _run(module, found.batch.tensors, found.layer, True, True, found.score_threshold)
    return forward, forward.gradients(box_scores)


def box_cam_maps(module: nn.Module, found: DetectionPass, methods: Sequence[str], chosen: Sequence[Sequence[int]],
                 iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> dict[str, list[torch.Tensor]]:
    """Each method's maps of the ``chosen`` detections (indices into each image's detections) of a
    :func:`detection_pass`: one backward for all of them; ``maps[method][n]`` is (k, H, W), row j the j-th chosen
    detection of image n (rows past its own count are blank)."""
    k = max((len(c) for c in chosen), default=0)
    sizes = [tuple(p.shape[:2]) for p in found.batch.photos]
    if not k:
        return {m: [torch.zeros((0, *size)) for size in sizes] for m in methods}
    forward, grads = _box_gradients(module, found, chosen, iou_threshold)
    return {m: list(scaled_maps(m, forward, grads, k, sizes)) for m in methods}


def detection_cam_results(module: nn.Module, found: DetectionPass, methods: Sequence[str], *, topk: int = 3,
                          targets: Sequence[int | str] | None = None,
                          iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                          colormap: str = "jet") -> list[CamResult]:
    """A CAM for each of the top-k detections of each image of a :func:`detection_pass` (one backward)."""
    from ..drawing import distinct_colors, labelled_panels, overlay

    if topk < 1:
        raise UsageError(f"topk={topk} must be at least 1", parameter="topk")
    batch, detections = found.batch, found.detections
    wanted = _resolve_targets(targets, found.categories)
    chosen = [[i for i in range(len(d)) if wanted is None or int(d.labels[i]) in wanted][:topk] for d in detections]
    k = max((len(c) for c in chosen), default=0)
    notes: list[str] = []
    if k == 0:
        notes.append(f"no detection scored {found.score_threshold:g} or more" +
                     (" in the classes asked for" if wanted else "") + ": nothing to explain")
    sizes = [tuple(p.shape[:2]) for p in batch.photos]
    forward, grads = _box_gradients(module, found, chosen, iou_threshold)
    results = []
    for method in methods:
        maps = scaled_maps(method, forward, grads, k, sizes) if k else [None] * len(sizes)
        if k and not any(bool(m.any()) for m in maps):
            notes.append(f"{method}: every map is zero at {forward.layer} (no gradient reaches it?): blank maps")
        for n, (boxes, picks) in enumerate(zip(detections, chosen)):
            entries = []
            for j, index in enumerate(picks):
                heatmap = maps[n][j].numpy().astype(np.float32)
                box = tuple(float(v) for v in boxes.boxes[index])
                one = slice(index, index + 1)

                def drawn(photo=batch.photos[n], heat=heatmap, found=boxes, one=one) -> np.ndarray:
                    colors = distinct_colors([int(label) for label in found.labels])[one]
                    return draw_detections(overlay(photo, heat, colormap), found.boxes[one], found.names[one],
                                           found.scores[one], found.labels[one], colors=colors, tags=False)

                subject = Subject("box", int(boxes.labels[index]), boxes.names[index], float(boxes.scores[index]),
                                  box=box, detection=index)
                entries.append(CamMap(method=method, subject=subject, heatmap=heatmap, image=drawn))

            def panel(shown=tuple(entries), found=boxes) -> np.ndarray:
                return labelled_panels([e.image for e in shown], [e.subject.caption for e in shown]) if shown else \
                    found.image

            results.append(CamResult(method=method, layer=forward.layer, levels=forward.levels,
                                     image_name=boxes.image_name, prediction=boxes, maps=tuple(entries), image=panel,
                                     warnings=tuple(notes)))
    for note in notes:
        warnings.warn(f"detection CAM: {note}", IntrospectWarning, stacklevel=2)
    return results


def detection_cams(
    model: nn.Module,
    images: Any,
    *,
    methods: str | Sequence[str] = ("gradcam",),
    topk: int = 3,
    layer: str | None = None,
    targets: Sequence[int | str] | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    categories: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    colormap: str = "jet",
    restrict_to_rois: bool = True,
) -> list[CamResult]:
    """A CAM for each of the top-k detections of each image: one forward pass, one backward.

    R-CNN models (a ``roi_heads`` with torchvision's box path) run their forward without recording; the box
    head is then re-run, with gradients, on the k RoIs behind the explained detections only, and one backward
    gives every target's gradients. Other detectors (RetinaNet, FCOS, SSD) record their heads in the forward
    pass and take one batched ``autograd.grad`` over the k targets.

    Args:
        model: a torchvision-style detector; it comes back untouched.
        images: as :func:`detect` takes them.
        methods: CAM methods served by one pass (gradcam, hirescam, gradcam++, xgradcam, layercam,
            gradcamelementwise, eigengradcam, eigencam, fem).
        topk: how many detections to explain per image (best scores first).
        layer: the module to explain (its tensor, or every map of its dict); None: the dict of feature
            maps the detector hands its heads (torchvision: ``backbone``, all FPN levels averaged).
        targets: explain only detections of these classes (category names or labels).
        score_threshold: lowest score of a detection shown and explained.
        iou_threshold: IoU above which an output box matches a reference detection (pytorch-grad-cam's target).
        categories: class names by label; None: COCO's.
        names: one name per image.
        colormap: matplotlib colormap of the overlays.
        restrict_to_rois: R-CNN models: differentiate the box head on the RoIs behind the explained detections
            only (the same targets and maps at a fraction of the cost); False: through the whole graph of the
            model's output, as pytorch-grad-cam does.
    Returns:
        One result per method and image (method-major), each carrying that image's :class:`Detections` as its
        ``prediction``.
    """
    _check_threshold(score_threshold)
    if topk < 1:
        raise UsageError(f"topk={topk} must be at least 1", parameter="topk")
    method_names = single_pass_methods(methods, "detection")
    module, categories = _model_and_categories(model, categories)
    batch = task_images(images, names)
    _resolve_targets(targets, categories if categories is not None else coco_categories())  # fail before the pass
    found = detection_pass(module, batch, methods=method_names, layer=layer, score_threshold=score_threshold,
                           categories=categories, restrict_to_rois=restrict_to_rois)
    try:
        return detection_cam_results(module, found, method_names, topk=topk, targets=targets,
                                     iou_threshold=iou_threshold, colormap=colormap)
    finally:
        found.release()



@dataclass(frozen=True)
class DetectionTask(HeadsTask):
    """Object detectors: boxes with names and scores, a CAM per top detection (its box score)."""

    def builder_kwargs(self, model_name: str, input_size: int | None, state: Any) -> dict:
        """Make the detector resize its inputs to ``input_size`` (SSD's size is fixed)."""
        if input_size is None or model_name.startswith("ssd"):
            return {}
        return {"min_size": input_size, "max_size": max(input_size, round(input_size * 1333 / 800))}

    def recognizes(self, module: Any) -> bool:
        """A torchvision-style detector: a direct child batches the images and maps the boxes back
        (``GeneralizedRCNNTransform``'s ``batch_images`` and ``postprocess``)."""
        return isinstance(module, nn.Module) and any(
            callable(getattr(child, "batch_images", None)) and callable(getattr(child, "postprocess", None))
            for child in module.children())

    def class_count(self, module: Any) -> int:
        for sub in module.modules():  # RetinaNet/FCOS/SSD heads say it; an R-CNN box predictor's cls_score shows it
            count = getattr(sub, "num_classes", None)
            if isinstance(count, int) and count > 0:
                return count
            score = getattr(sub, "cls_score", None)
            if isinstance(score, nn.Linear):
                return score.out_features
        return 0

    def default_categories(self, classes: int) -> tuple[str, ...] | None:
        names = coco_categories()
        return names if classes in (0, len(names)) else None

    def input_recipe(self, model_name: str, net: Any, weights: Any, input_size: int | None) -> InputRecipe:
        from ..loaded import imagenet_transform

        rcnn_transform = getattr(net, "transform", None)
        size = input_size or (int(rcnn_transform.min_size[0]) if rcnn_transform is not None else 512)
        classes = len(weights.meta.get("categories") or ()) if weights is not None else 0
        # Detectors normalise inside the model: they take [0, 1] pixels.
        return InputRecipe(size, imagenet_transform(size, size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), None,
                           classes)

    def check_cam_options(self, ctx: Any) -> None:
        if ctx.cam.topk < 1:
            raise UsageError(f"topk={ctx.cam.topk} must be at least 1", parameter="topk")
        _resolve_targets(ctx.cam.targets, ctx.loaded.categories or coco_categories())

    def run_pass(self, ctx: Any, batch: TaskImages, methods: Sequence[str], capture: Sequence[str]) -> DetectionPass:
        return detection_pass(ctx.model, batch, methods=methods, layer=ctx.cam.layer,
                              score_threshold=ctx.detection.score_threshold,
                              categories=ctx.loaded.categories or None, capture=capture)

    def predictions(self, ctx: Any) -> list:
        return list(ctx.forward.detections)

    def explain(self, ctx: Any, methods: Sequence[str]) -> list:
        return detection_cam_results(ctx.model, ctx.forward, methods, topk=ctx.cam.topk, targets=ctx.cam.targets,
                                     colormap=ctx.cam.colormap)

    def run_info(self, ctx: Any) -> dict[str, object]:
        return {"score threshold": ctx.detection.score_threshold}
