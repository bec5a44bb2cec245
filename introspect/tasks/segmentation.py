"""Semantic segmentation (torchvision FCN, DeepLabV3, LR-ASPP): per-pixel classes and a CAM per class present.

:func:`segment` runs a segmenter once and returns, per image, a :class:`Segmentation`: the argmax
class of every pixel, the classes present with their share of the pixels, and the photo with
the classes drawn over it and a legend.

:func:`segmentation_cams` explains each class present (largest first, up to ``max_classes``),
all classes of all images from one forward pass and one batched backward. The target of class c
is pytorch-grad-cam's ``SemanticSegmentationTarget``: the class's logit (``'out'`` of the model's
output dict) summed over the pixels predicted as c. Gradients are taken with respect to the
feature maps the model hands its heads (torchvision: ``backbone``, whose dict holds ``'out'`` and
``'aux'``, or ``'low'`` and ``'high'``); each map is one input of the heads (the trunk between two
maps is not differentiated) and the CAM is the mean of the per-map CAMs (see
:func:`introspect.engine.cam.scaled_maps`). ``'aux'`` feeds only the auxiliary head, so for the
gradient methods its map is blank and the CAM is that of ``'out'``, as with pytorch-grad-cam's
``backbone.layer4``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.cam import CAM_METHODS, scaled_maps, score_maps, single_pass_methods
from ..errors import IntrospectWarning, TargetError, UsageError
from ..engine.forward import FEATURE_MAPS, ForwardPass, run_forward
from ..engine.resize import bilinear_matrix
from ..engine.targets import PixelClass, target_scores
from ..loaded import IMAGENET_MEAN, IMAGENET_STD, device_and_dtype
from ..records import CamMap, CamResult, Segmentation, SegmentClass, Subject
from .base import InputRecipe
from .common import HeadsTask, TaskImages, task_images

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_MAX_CLASSES", "voc_categories", "segment",
           "segmentation_cams", "draw_segmentation", "draw_class_map", "SegmentationPass", "segmentation_pass",
           "segmentation_cam_results", "pixel_class_maps", "class_maps_of", "SegmentationTask"]

DEFAULT_MAX_CLASSES = 5
"""At most this many classes present are explained per image (largest share first)."""


def voc_categories() -> tuple[str, ...]:
    """The 21 Pascal VOC class names torchvision's segmentation weights use (index 0 is ``__background__``)."""
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    return tuple(FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"])


def _palette(index: int) -> tuple[int, int, int]:
    """Pascal VOC's colour map: class i's colour from the bits of i."""
    r = g = b = 0
    c = index
    for shift in range(7, -1, -1):
        r |= ((c >> 0) & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return r, g, b


def _name(categories: Sequence[str], index: int) -> str:
    return categories[index] if 0 <= index < len(categories) else f"class {index}"


def draw_segmentation(photo: np.ndarray, class_map: np.ndarray, classes: Sequence[SegmentClass]) -> np.ndarray:
    """The photo with each class present drawn over it (alpha 0.6) and a legend strip below; uint8 HWC."""
    from PIL import Image, ImageDraw
    from torchvision.utils import draw_segmentation_masks

    from ..drawing import load_font, readable_font_px

    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).contiguous()
    if classes:
        masks = torch.from_numpy(np.stack([class_map == c.index for c in classes]))
        image = draw_segmentation_masks(image, masks, alpha=0.6, colors=[c.color for c in classes])
    drawn = image.permute(1, 2, 0).contiguous().numpy()
    height, width = drawn.shape[:2]
    size = readable_font_px(width)  # readable once TensorBoard scales the image to its card
    font = load_font(size)
    line = size + 6
    legend = Image.new("RGB", (width, line * max(1, len(classes)) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, c in enumerate(classes):
        y = 2 + i * line
        draw.rectangle([4, y + 2, 4 + size, y + 2 + size], fill=c.color, outline=(0, 0, 0))
        draw.text((10 + size, y + 1), f"{c.name} {c.share:.1%}", fill=(0, 0, 0), font=font)
    return np.concatenate([drawn, np.asarray(legend, dtype=np.uint8)], axis=0)


def draw_class_map(photo: np.ndarray, class_map: np.ndarray, num_classes: int, alpha: float = 0.6) -> np.ndarray:
    """The photo with each class of ``class_map`` below ``num_classes`` drawn over it in Pascal VOC's colours
    (other values, such as 255 = ignore, left undrawn); no legend. uint8 HWC."""
    from torchvision.utils import draw_segmentation_masks

    present = [int(c) for c in np.unique(class_map) if 0 <= c < num_classes]
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).contiguous()
    if present:
        masks = torch.from_numpy(np.stack([class_map == c for c in present]))
        image = draw_segmentation_masks(image, masks, alpha=alpha, colors=[_palette(c) for c in present])
    return image.permute(1, 2, 0).contiguous().numpy()


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, Mapping):
        output = output["out"] if "out" in output else next(iter(output.values()))
    if not (isinstance(output, torch.Tensor) and output.ndim == 4):
        raise UsageError("the model does not return per-pixel class scores ((N, classes, H, W), or a dict with "
                         "'out'): use it with the classification or detection analyzers")
    return output


def _groups(batch: TaskImages) -> list[list[int]]:
    """Indices of the images by size (one forward pass per size)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, tensor in enumerate(batch.tensors):
        groups.setdefault(tuple(tensor.shape), []).append(i)
    return list(groups.values())


def _batched(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The (N, 3, H, W) batch of ``tensors``: the tensor they were unbound from (an audit's batch), else a stack."""
    base = tensors[0]._base if tensors else None
    if (base is not None and base.ndim == 4 and base.shape[0] == len(tensors)
            and all(t._base is base and t.shape == base.shape[1:] and t.stride() == base.stride()[1:]
                    and t.data_ptr() == base[i].data_ptr() for i, t in enumerate(tensors))):
        return base
    return torch.stack(list(tensors))


def _forward(module: nn.Module, batch: TaskImages, mean: Sequence[float], std: Sequence[float], layer: str | None,
             leaves: bool, record: bool, capture: Sequence[str] = ()) -> ForwardPass:
    device, dtype = device_and_dtype(module)
    x = _batched(batch.tensors).to(device=device, dtype=dtype)
    if not batch.normalized:
        x = (x - torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1)) / \
            torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1)
    heads = [name for name, _ in module.named_children()] if record else []  # for the head fast path
    return run_forward(module, x, capture=capture, grad_layer=(layer or FEATURE_MAPS) if leaves else None,
                       record=record, raw=heads, names={"capture": "layers", "grad_layer": "layer"})


def _resized_head(forward: ForwardPass, logits: torch.Tensor) -> torch.Tensor | None:
    """The direct child's output that the model's per-pixel scores are a bilinear resize of (torchvision's
    ``classifier``: (N, C, h, w) scores upsampled to the input), checked on this pass's values (its first and last
    class channels, on rows spread over the output, as a resize works channel by channel and row by row);
    None if none is."""
    size = tuple(logits.shape[-2:])
    for name, value in forward.raw.items():
        head = value.get("out") if isinstance(value, Mapping) else value
        if not (isinstance(head, torch.Tensor) and head.requires_grad and head.ndim == 4
                and head.shape[:2] == logits.shape[:2] and head.shape[-2:] != logits.shape[-2:]):
            continue
        channels = [0, head.shape[1] - 1]
        rows = torch.linspace(0, size[0] - 1, min(size[0], 9), device=head.device).round().long().unique()
        a_h = bilinear_matrix(head.shape[-2], size[0], head.dtype, head.device)
        a_w = bilinear_matrix(head.shape[-1], size[1], head.dtype, head.device)
        with torch.no_grad():
            resized = a_h[rows] @ head.detach()[:, channels] @ a_w.T  # those rows of the resize
        if torch.allclose(resized, logits.detach()[:, channels][:, :, rows], rtol=1e-4, atol=1e-5):
            return head
    return None


def _pixel_class_scores(head: torch.Tensor, targets: Sequence[Sequence[PixelClass]],
                        size: tuple[int, int]) -> torch.Tensor:
    """(N, k) :class:`PixelClass` scores taken on the low-resolution ``head`` the output is resized from.

    A pixel-class score is linear in the resized scores (its logit summed over its mask), so it equals the
    head's class channel weighted by the resize's adjoint applied to the mask (``A_h.T @ mask @ A_w``): the same
    value and the same gradients at the leaves, without differentiating the full-resolution resize of every
    class (its backward over all classes was most of a segmentation CAM's cost).
    """
    n, k = len(targets), max(len(row) for row in targets)
    masks = torch.zeros((n, k, *size), dtype=head.dtype, device=head.device)
    index = torch.zeros((n, k), dtype=torch.long, device=head.device)
    for row, row_targets in enumerate(targets):
        for j, target in enumerate(row_targets):
            masks[row, j] = target.class_map.to(head.device) == target.index
            index[row, j] = target.index
    a_h = bilinear_matrix(head.shape[-2], size[0], head.dtype, head.device)
    a_w = bilinear_matrix(head.shape[-1], size[1], head.dtype, head.device)
    weights = a_h.T @ masks @ a_w  # (N, k, h, w); zero where an image has fewer targets
    picked = head[torch.arange(n, device=head.device)[:, None], index]  # (N, k, h, w): each target's channel
    return (picked * weights).sum((-2, -1))


def class_maps_of(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W) the class of each pixel: the first channel holding the maximum of (N, C, H, W) ``logits``
    (``logits.max(1).indices``, about 3x faster: a max, an equality and a max of small integers)."""
    logits = logits.detach()
    classes = logits.shape[1]
    equal = logits == logits.amax(1, keepdim=True)
    equal = equal.view(torch.uint8) if classes < 256 else equal.to(torch.int32)  # uint8: the bools' own bytes
    ranks = torch.arange(classes, 0, -1, dtype=equal.dtype, device=logits.device).view(1, classes, 1, 1)
    best = equal.mul_(ranks).amax(1)  # classes - first index of the maximum; 0 where a pixel is NaN
    if not bool(best.all()):
        return logits.max(1).indices
    return classes - best.long()


def _segmentation(class_map: torch.Tensor, name: str, photo: np.ndarray, categories: Sequence[str]) -> Segmentation:
    """The record of one image from its (H, W) map of argmax classes."""
    class_map = class_map.cpu()
    total = int(class_map.numel())
    counts = torch.bincount(class_map.flatten()).tolist()  # linear time: torch.unique sorts every pixel
    present = sorted(((i, c) for i, c in enumerate(counts) if c), key=lambda ic: (-ic[1], ic[0]))
    classes = tuple(SegmentClass(index=i, name=_name(categories, i), pixels=int(c), share=c / total, color=_palette(i))
                    for i, c in present)
    array = class_map.numpy().astype(np.int64)
    if photo.shape[:2] != array.shape:
        raise UsageError(f"the model's output is {array.shape[1]}x{array.shape[0]} for a "
                         f"{photo.shape[1]}x{photo.shape[0]} image: it must give one score per input pixel")
    return Segmentation(image_name=name, class_map=array, classes=classes,
                        image=lambda: draw_segmentation(photo, array, classes))


def _module(model: Any, categories: Sequence[str] | None) -> tuple[nn.Module, Sequence[str]]:
    module = model if isinstance(model, nn.Module) else getattr(model, "model", model)  # a LoadedModel
    if categories is None and module is not model:
        categories = getattr(model, "categories", None) or None
    if not isinstance(module, nn.Module):
        raise UsageError(f"expected a torch.nn.Module segmenter, got {type(model).__name__}")
    return module, tuple(categories) if categories is not None else voc_categories()


@dataclass
class SegmentationPass:
    """One segmenter forward pass over images of one size: the masks, the captured layers, and (for a CAM)
    the feature maps the heads read as gradient leaves."""

    forward: ForwardPass
    batch: TaskImages
    logits: torch.Tensor  # (N, classes, H, W), recorded from the leaves when gradients were asked for
    class_maps: torch.Tensor  # (N, H, W): the argmax class of each pixel
    segmentations: list[Segmentation]
    gradients: bool

    def release(self) -> None:
        """Drop the recorded graph and the feature maps."""
        self.forward.release()
        self.logits = self.logits.detach()


def _subset(batch: TaskImages, indices: Sequence[int]) -> TaskImages:
    return TaskImages(tuple(batch.tensors[i] for i in indices), tuple(batch.photos[i] for i in indices),
                      tuple(batch.names[i] for i in indices), batch.normalized)


def segmentation_pass(module: nn.Module, batch: TaskImages, *, methods: Sequence[str] = (), layer: str | None = None,
                      categories: Sequence[str], mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD, capture: Sequence[str] = ()) -> SegmentationPass:
    """Run a segmenter once over ``batch`` (images of one size): the masks, the layers in ``capture``, and (for
    ``methods``) the feature maps its heads read as gradient leaves."""
    if len(_groups(batch)) > 1:
        raise UsageError("segmentation_pass takes images of one size: group them first", parameter="images")
    needs_grad = any(CAM_METHODS[m].uses_gradients for m in methods)
    forward = _forward(module, batch, mean, std, layer, bool(methods), needs_grad, capture)
    logits = _logits(forward.output)
    class_maps = class_maps_of(logits)  # once, for the records and the targets
    segs = [_segmentation(class_maps[n], batch.names[n], batch.photos[n], categories) for n in range(len(batch))]
    return SegmentationPass(forward=forward, batch=batch, logits=logits, class_maps=class_maps, segmentations=segs,
                            gradients=needs_grad)


def pixel_class_maps(found: SegmentationPass, methods: Sequence[str],
                     targets: Sequence[Sequence[PixelClass]]) -> dict[str, list[torch.Tensor]]:
    """Each method's maps of the :class:`PixelClass` ``targets`` of each image of a :func:`segmentation_pass`
    (any class map: the predicted one, or a ground-truth mask): one batched backward; ``maps[method][n]`` is
    (k, H, W), row j the j-th target of image n."""
    forward, logits = found.forward, found.logits
    k = max((len(row) for row in targets), default=0)
    sizes = [tuple(photo.shape[:2]) for photo in found.batch.photos]
    if not k:
        return {m: [torch.zeros((0, *size)) for size in sizes] for m in methods}
    if not found.gradients:
        return {m: scaled_maps(m, forward, None, k, sizes) for m in methods}
    head = _resized_head(forward, logits)
    if head is not None:  # the same gradients through the head alone
        scores = _pixel_class_scores(head, targets, tuple(logits.shape[-2:]))
    else:
        scores = target_scores(targets, forward.output)
    return score_maps(methods, forward, scores, sizes)


def segmentation_cam_results(found: SegmentationPass, methods: Sequence[str], *,
                             max_classes: int = DEFAULT_MAX_CLASSES, skip_background: bool = True,
                             colormap: str = "jet") -> list[CamResult]:
    """A CAM for each class present in each image of a :func:`segmentation_pass`: one batched backward, whose
    target per class is its logit summed over the pixels predicted as that class."""
    from ..drawing import labelled_panels, overlay

    if max_classes < 1:
        raise UsageError(f"max_classes={max_classes} must be at least 1", parameter="max_classes")
    forward, batch, segs = found.forward, found.batch, found.segmentations
    chosen = []
    for seg in segs:
        classes = list(seg.classes)
        if skip_background and len(classes) > 1:
            classes = [c for c in classes if c.name != "__background__"]
        chosen.append(classes[:max_classes])
    k = max(len(c) for c in chosen)
    notes: list[str] = []
    targets = [[PixelClass(c.index, found.class_maps[row]) for c in classes] for row, classes in enumerate(chosen)]
    maps = {m: [t.numpy() for t in per_image] for m, per_image in pixel_class_maps(found, methods, targets).items()}
    notes += [f"{m}: every map is zero at {forward.layer} (no gradient reaches it?): the maps are blank"
              for m in methods if k and not any(t.any() for t in maps[m])]
    results = []
    for method in methods:
        for n, (seg, classes) in enumerate(zip(segs, chosen)):
            entries = []
            for j, c in enumerate(classes):
                heatmap = maps[method][n][j].astype(np.float32)
                entries.append(CamMap(method=method, subject=Subject("mask class", c.index, c.name, c.share),
                                      heatmap=heatmap, image=lambda photo=batch.photos[n], heat=heatmap: overlay(
                                          photo, heat, colormap)))
            results.append(CamResult(method=method, layer=forward.layer, levels=forward.levels,
                                     image_name=seg.image_name, prediction=seg, maps=tuple(entries),
                                     image=lambda shown=tuple(entries): labelled_panels(
                                         [e.image for e in shown], [e.subject.caption for e in shown]),
                                     warnings=tuple(notes)))
    for note in notes:
        warnings.warn(f"segmentation CAM: {note}", IntrospectWarning, stacklevel=2)
    return results


def segment(
    model: nn.Module,
    images: Any,
    *,
    categories: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    names: Sequence[str] | None = None,
) -> list[Segmentation]:
    """Run a segmenter once per image size; one :class:`Segmentation` per image.

    Args:
        model: a torchvision-style segmenter (``model(x)['out']`` or ``model(x)``: (N, classes, H, W)), or a
            loaded model carrying ``.model`` and ``.categories``; it comes back untouched.
        images: a (N, 3, H, W) / (3, H, W) tensor in [0, 1], a path, a PIL image, an (H, W, 3) array, or a list
            (normalised here with ``mean`` / ``std``); or an ``InputBatch`` (already normalised).
        categories: class names by index; None: Pascal VOC's 21.
        mean, std: the normalisation the model was trained with.
        names: one name per image.
    Returns:
        One record per image, in the order given.
    """
    module, cats = _module(model, categories)
    batch = task_images(images, names)
    found: dict[int, Segmentation] = {}
    for indices in _groups(batch):
        one = segmentation_pass(module, _subset(batch, indices), categories=cats, mean=mean, std=std)
        found.update(zip(indices, one.segmentations))
        one.release()
    return [found[i] for i in range(len(batch))]


def segmentation_cams(
    model: nn.Module,
    images: Any,
    *,
    methods: str | Sequence[str] = ("gradcam",),
    layer: str | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    skip_background: bool = True,
    categories: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    names: Sequence[str] | None = None,
    colormap: str = "jet",
) -> list[CamResult]:
    """A CAM for each class present in each image: one forward pass and one batched backward per image size.

    Args:
        model: a torchvision-style segmenter; it comes back untouched.
        images: as :func:`segment` takes them.
        methods: CAM methods served by one pass (gradcam, hirescam, gradcam++, xgradcam, layercam,
            gradcamelementwise, eigengradcam, eigencam, fem).
        layer: the module to explain (its tensor, or every map of its dict); None: the dict of feature maps
            the model hands its heads (torchvision: ``backbone``).
        max_classes: how many classes to explain per image (largest share of pixels first).
        skip_background: leave out a class named ``__background__`` (unless it is the only one).
        categories, mean, std, names: as :func:`segment` takes them.
        colormap: matplotlib colormap of the overlays.
    Returns:
        One result per method and image (method-major), each carrying that image's :class:`Segmentation` as its
        ``prediction``.
    """
    if max_classes < 1:
        raise UsageError(f"max_classes={max_classes} must be at least 1", parameter="max_classes")
    method_names = single_pass_methods(methods, "segmentation")
    module, cats = _module(model, categories)
    batch = task_images(images, names)
    per_method: dict[str, dict[int, CamResult]] = {m: {} for m in method_names}
    for indices in _groups(batch):
        one = segmentation_pass(module, _subset(batch, indices), methods=method_names, layer=layer, categories=cats,
                                mean=mean, std=std)
        try:
            results = segmentation_cam_results(one, method_names, max_classes=max_classes,
                                               skip_background=skip_background, colormap=colormap)
        finally:
            one.release()
        for position, result in enumerate(results):
            per_method[result.method][indices[position % len(indices)]] = result
    return [per_method[m][i] for m in method_names for i in range(len(batch))]



@dataclass(frozen=True)
class SegmentationTask(HeadsTask):
    """Semantic segmenters: the mask with a legend, a CAM per class present (its logit over its pixels)."""

    def builder_kwargs(self, model_name: str, input_size: int | None, state: Any) -> dict:
        """Trained weights carry the auxiliary head or not: build the model to match them."""
        return {"aux_loss": any(key.startswith("aux_classifier.") for key in state)} if state is not None else {}

    def recognizes(self, module: Any) -> bool:
        """A torchvision-style segmenter: a ``backbone`` child that returns a dict of stages (torchvision's
        ``IntermediateLayerGetter``, which keeps the names it returns in ``return_layers``) and a ``classifier``."""
        backbone = getattr(module, "backbone", None)
        return (isinstance(module, nn.Module) and isinstance(getattr(backbone, "return_layers", None), dict)
                and isinstance(getattr(module, "classifier", None), nn.Module))

    def class_count(self, module: Any) -> int:
        convs = [m for m in module.classifier.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels if convs else 0  # the last conv of the head scores the classes

    def default_categories(self, classes: int) -> tuple[str, ...] | None:
        names = voc_categories()
        return names if classes in (0, len(names)) else None

    def input_recipe(self, model_name: str, net: Any, weights: Any, input_size: int | None) -> InputRecipe:
        from ..loaded import imagenet_transform

        preset = weights.transforms() if weights is not None else None
        size = input_size or (int(preset.resize_size[0]) if preset is not None and preset.resize_size else 520)
        mean, std = (preset.mean, preset.std) if preset is not None else (IMAGENET_MEAN, IMAGENET_STD)
        classes = len(weights.meta.get("categories") or ()) if weights is not None else 0
        return InputRecipe(size, imagenet_transform(size, size, mean=mean, std=std), None, classes)

    def check_cam_options(self, ctx: Any) -> None:
        if ctx.cam.targets:
            raise TargetError(f"targets={str(ctx.cam.targets[0])!r} does not apply: {ctx.loaded.name} explains "
                              "every class present in the mask, drop it", parameter="targets")

    def run_pass(self, ctx: Any, batch: TaskImages, methods: Sequence[str],
                 capture: Sequence[str]) -> SegmentationPass:
        return segmentation_pass(ctx.model, batch, methods=methods, layer=ctx.cam.layer,
                                 categories=ctx.loaded.categories or voc_categories(), capture=capture)

    def predictions(self, ctx: Any) -> list:
        return list(ctx.forward.segmentations)

    def explain(self, ctx: Any, methods: Sequence[str]) -> list:
        return segmentation_cam_results(ctx.forward, methods, max_classes=ctx.cam.topk, colormap=ctx.cam.colormap)
