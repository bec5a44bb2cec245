"""One forward pass of a detector or segmenter with its feature maps as autograd leaves, and CAMs from it.

Detection and segmentation models hand their heads a dict of feature maps (torchvision's
``backbone``: FPN levels ``'0', '1', ..., 'pool'`` for detectors, ``'out'``/``'aux'`` or
``'low'``/``'high'`` for segmenters). :func:`feature_pass` runs the model once inside
:func:`introspect.hooks.inspecting`: the trunk up to that dict runs without recording
anything, each map of the dict becomes a leaf of a fresh autograd graph, and only the heads
are recorded. :meth:`FeaturePass.gradients` then takes the gradients of any number of
target scores with respect to every leaf in one batched ``torch.autograd.grad`` call.

Which module: the last direct child of the model whose output is a mapping of
``(N, C, H, W)`` maps (the multi-scale features the heads consume), or the module named
by ``layer=`` (its tensor, or every map of its dict). The CAM of a dict is the mean of the
per-map CAMs, each scaled as pytorch-grad-cam scales one target layer (ReLU, min-max,
bilinear resize), then ReLU and min-max again: pytorch-grad-cam's aggregation over
several target layers. A level that the score does not reach (an FPN level whose RoIs
were pooled elsewhere, the detector's RPN-only ``'pool'``) has zero gradient and a blank
map, which changes nothing after the last min-max. Averaging every level matters: a
detection's score depends on one FPN level only (the one its RoI or anchor came from), so
a single level leaves most detections blank.

Detectors resize and pad their inputs (``GeneralizedRCNNTransform``); the maps are
resized to the padded canvas at the input image's scale and the padding is cropped away,
so every heatmap lies over the input image's own pixels. Without padding this is one
bilinear resize to the image, exactly as pytorch-grad-cam does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analyzers.cam import CAM_METHODS, parse_cam_methods
from ..errors import ImageError, StateError, UnknownLayerError, UnknownMethodError, UsageError
from ..hooks import inspecting
from ..layers import resolve_layer

__all__ = ["TaskImages", "task_images", "FeaturePass", "feature_pass", "batched_gradients", "single_pass_methods",
           "scaled_maps"]


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class TaskImages:
    """Images as detectors and segmenters take them: float (3, H, W) in [0, 1], each its own size."""

    tensors: tuple[torch.Tensor, ...]
    photos: tuple[np.ndarray, ...]  # uint8 (H, W, 3): the same pixels
    names: tuple[str, ...]
    normalized: bool = False  # True: the tensors are already what the model eats (from an InputBatch)

    def __len__(self) -> int:
        return len(self.tensors)


def _to_tensor(item: Any) -> torch.Tensor:
    from PIL import Image

    if isinstance(item, Image.Image):
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ImageError(f"an image array must be (H, W, 3) uint8 or float in [0, 1], got shape {array.shape}")
        array = array[..., :3] if array.shape[2] != 1 else np.repeat(array, 3, axis=2)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        return tensor.float() / 255.0 if array.dtype == np.uint8 else tensor.float()
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ImageError(f"an image tensor must be (3, H, W) with values in [0, 1], got {tuple(item.shape)}")
        return item.float() / 255.0 if item.dtype == torch.uint8 else item.float()
    raise ImageError(f"cannot read an image from {type(item).__name__}: pass a path, a PIL image, an (H, W, 3) "
                     "array, or a (3, H, W) / (N, 3, H, W) tensor in [0, 1]")


def task_images(images: Any, names: Sequence[str] | None = None) -> TaskImages:
    """Images from a (N, 3, H, W) or (3, H, W) tensor in [0, 1], a path, a PIL image, an array, or a list of those.

    An ``introspect.inputs.InputBatch`` is taken as it is: its tensor is what the model eats
    (for a detector: pixels in [0, 1]; the detector normalises them itself).
    """
    from ..images import load_images

    if hasattr(images, "tensor") and hasattr(images, "names") and hasattr(images, "photos"):  # an InputBatch
        return TaskImages(tuple(images.tensor.unbind(0)), tuple(np.asarray(p) for p in images.photos),
                          tuple(images.names), normalized=True)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: list[Any] = list(images.unbind(0))
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ImageError("no image given: pass at least one path, PIL image, array or tensor")
    pairs: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            for name, image in load_images([item]):
                pairs.append((name, _to_tensor(image)))
        else:
            pairs.append((f"image{i}", _to_tensor(item)))
    labels = tuple(names) if names else tuple(name for name, _ in pairs)
    if len(labels) != len(pairs):
        raise UsageError(f"names= has {len(labels)} entries for {len(pairs)} images: give one name per image")
    tensors = tuple(t.detach() for _, t in pairs)
    photos = tuple((t.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                   for t in tensors)
    return TaskImages(tensors, photos, labels)


# ---------------------------------------------------------------------- forward pass


def _is_map(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 4 and value.is_floating_point() and \
        value.shape[-1] > 1 and value.shape[-2] > 1


def _is_map_dict(value: Any) -> bool:
    """A dict of (N, C, H, W) maps (the smallest of a pyramid may be 1x1, as SSD's last ones)."""
    return isinstance(value, Mapping) and len(value) > 0 and any(_is_map(v) for v in value.values()) and all(
        isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point() for v in value.values())


def _canvas(value: Any) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]] | None:
    """(padded size, resized image sizes) from an ``ImageList`` (a detector's transform output)."""
    item = value[0] if isinstance(value, tuple) and value else value
    tensors, sizes = getattr(item, "tensors", None), getattr(item, "image_sizes", None)
    if isinstance(tensors, torch.Tensor) and sizes is not None:
        return (int(tensors.shape[-2]), int(tensors.shape[-1])), tuple((int(h), int(w)) for h, w in sizes)
    return None


@dataclass
class FeaturePass:
    """What :func:`feature_pass` produced: the model's output (graph kept from the leaves on) and the leaves."""

    output: Any
    layer: str
    leaves: dict[str, torch.Tensor]  # level name ("" for a single tensor) -> leaf (N, C, h, w)
    canvas: tuple[tuple[int, int], tuple[tuple[int, int], ...]] | None = None  # detectors: padded, resized sizes
    captured: dict[str, Any] = field(default_factory=dict)  # outputs of the modules named in capture=
    _recorded: bool = field(default=False, repr=False)

    @property
    def levels(self) -> tuple[str, ...]:
        """Names of the feature maps (FPN levels; ``("",)`` for a single tensor)."""
        return tuple(self.leaves)

    def activations(self) -> dict[str, torch.Tensor]:
        """The feature maps, detached."""
        return {name: leaf.detach() for name, leaf in self.leaves.items()}

    def layer_output(self, name: str) -> torch.Tensor | None:
        """The first tensor of the output of the module captured as ``name`` (``capture=``), detached, or None."""
        from ..hooks import first_tensor

        value = self.captured.get(name)
        return None if value is None else first_tensor(value).detach()

    def release(self) -> None:
        """Drop the recorded graph, the feature maps and the captured outputs."""
        self.leaves.clear()
        self.captured.clear()
        self.output = None

    def gradients(self, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """d scores[n, j] / d feature map for every j at once (see :func:`batched_gradients`)."""
        if not self._recorded:
            raise StateError("this feature pass recorded no graph: run it with gradients=True")
        return batched_gradients(scores, self.leaves)


def batched_gradients(scores: torch.Tensor, leaves: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """d scores[n, j] / d leaf, for every target j at once: name -> (k, N, C, h, w).

    ``scores`` is (N, k): target j of image n (0 where an image has fewer targets). One
    ``torch.autograd.grad`` with ``is_grads_batched=True`` over the k targets; where an op has no
    batching rule, one vector-Jacobian product per target on the same graph. A leaf the scores do not
    reach gets zeros.
    """
    names = list(leaves)
    tensors = [leaves[n] for n in names]
    n, k = scores.shape
    if k == 0 or not scores.requires_grad:
        return {name: torch.zeros((k, *leaf.shape), dtype=leaf.dtype, device=leaf.device)
                for name, leaf in zip(names, tensors)}
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    one_hot = eye[:, None, :].expand(k, n, k).contiguous()  # one_hot[j] picks column j of every row
    try:
        grads = torch.autograd.grad(scores, tensors, one_hot, retain_graph=True, is_grads_batched=True,
                                    allow_unused=True, materialize_grads=True)
    except (RuntimeError, NotImplementedError):
        per_target = [torch.autograd.grad(scores, tensors, one_hot[j], retain_graph=True, allow_unused=True,
                                          materialize_grads=True) for j in range(k)]
        grads = tuple(torch.stack([g[i] for g in per_target]) for i in range(len(tensors)))
    return dict(zip(names, grads))


def feature_pass(model: nn.Module, inputs: Any, *, layer: str | None = None, gradients: bool = True,
                 settings: Sequence[tuple[object, str, object]] = (),
                 capture: Mapping[str, nn.Module] | None = None, require_features: bool = True) -> FeaturePass:
    """Run ``model(inputs)`` once in eval mode, the features it hands its heads made autograd leaves.

    Args:
        model: a detector or segmenter; it comes back untouched.
        inputs: what the model takes (a list of (3, H, W) tensors, or an (N, 3, H, W) batch).
        layer: a module name whose output (a tensor or a dict of maps) to explain; None: the last direct
            child whose output is a dict of (N, C, H, W) maps.
        gradients: record the heads' graph (False: everything under ``torch.no_grad``).
        settings: ``(object, attribute, value)`` set for this pass only (e.g. a detector's ``score_thresh``).
        capture: modules whose outputs to keep, by key (``FeaturePass.captured``).
        require_features: raise when no feature maps were found (False: ``leaves`` may be empty).
    Returns:
        A :class:`FeaturePass`.
    """
    if gradients and torch.is_inference_mode_enabled():
        raise UsageError("gradient CAM methods cannot run inside torch.inference_mode(): call them outside it, "
                         "or use methods='eigencam'")
    target = resolve_layer(model, layer) if layer is not None else None
    found: dict[str, Any] = {}

    def make_leaves(name: str, output: Any) -> Any:
        if not (_is_map(output) or _is_map_dict(output)):
            return None
        if gradients:
            torch.set_grad_enabled(True)  # record from here on (the clones below included): the heads only
        if _is_map(output):
            leaves = {"": output.detach().requires_grad_(gradients)}
            passed: Any = leaves[""].clone() if gradients else leaves[""]
        else:
            leaves = {key: value.detach().requires_grad_(gradients) for key, value in output.items()}
            passed = type(output)((key, leaf.clone() if gradients else leaf) for key, leaf in leaves.items()) \
                if isinstance(output, OrderedDict) else {key: leaf.clone() if gradients else leaf
                                                         for key, leaf in leaves.items()}
        found["layer"], found["leaves"] = name, leaves
        return passed

    def child_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            canvas = _canvas(output)
            if canvas is not None:
                found["canvas"] = canvas
            if target is None and _is_map_dict(output):
                return make_leaves(name, output)
            return None
        return hook

    def capturing(key: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            found.setdefault("captured", {})[key] = output
        return hook

    def target_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        passed = make_leaves(layer, output)
        if passed is None:
            raise UnknownLayerError(f"layer {layer!r} gives {type(output).__name__}, not an (N, C, H, W) map or a "
                                    "dict of them: pass another layer= (e.g. 'backbone')")
        return passed

    with inspecting(model) as scope:
        for obj, attribute, value in settings:
            scope.set_attribute(obj, attribute, value)
        for name, child in model.named_children():
            scope.forward_hook(child, child_hook(name))
        if target is not None:
            scope.forward_hook(target, target_hook)
        for key, module in (capture or {}).items():
            scope.forward_hook(module, capturing(key))
        with torch.no_grad():
            output = model(inputs)
    if "leaves" not in found and (require_features or target is not None):
        if target is not None:
            raise UnknownLayerError(f"layer {layer!r} does not run in the model's forward pass (in eval mode): "
                                    "pick another layer=")
        raise UsageError(f"{type(model).__name__} has no direct child that outputs a dict of (N, C, H, W) feature "
                         "maps: name the layer to explain with layer=")
    return FeaturePass(output=output, layer=found.get("layer", ""), leaves=found.get("leaves", {}),
                       canvas=found.get("canvas"),
                       captured=found.get("captured", {}), _recorded=gradients)


# ------------------------------------------------------------------------------ maps


def single_pass_methods(methods: str | Sequence[str], task: str) -> list[str]:
    """Known CAM method names that one forward pass serves; the others are refused in one line."""
    names = parse_cam_methods(methods)
    offered = [name for name, m in CAM_METHODS.items() if not m.delegated]
    for name in names:
        if CAM_METHODS[name].delegated:
            raise UnknownMethodError(f"CAM method {name!r} needs many forward passes and is not offered for "
                                     f"{task}: choose from {', '.join(offered)}")
    return names


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (1e-7 + maps.amax(dim=(-2, -1), keepdim=True))


def scaled_maps(method: str, fp: FeaturePass, grads: dict[str, torch.Tensor] | None, k: int,
                sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """The CAMs of one method: per image n, (k, H_n, W_n) float in [0, 1] over the input image's pixels.

    Per level: the method's formula (``CAM_METHODS[method].compute``), ReLU, min-max, bilinear resize;
    then the mean over levels, ReLU and min-max (pytorch-grad-cam's scaling and its multi-layer mean).
    """
    entry = CAM_METHODS[method]
    activations = fp.activations()
    per_image: list[torch.Tensor | None] = [None] * len(sizes)
    for level, activation in activations.items():
        dtype = torch.float64 if activation.dtype == torch.float64 else torch.float32  # half -> float
        a = activation.to(dtype)
        g = None
        if entry.uses_gradients:
            if grads is None:
                raise StateError(f"{method} needs gradients: run the feature pass with gradients=True")
            g = grads[level].to(dtype)
        raw = torch.nan_to_num(entry.compute(a, g).to(device=a.device, dtype=dtype))  # (k or 1, N, h, w)
        raw = _minmax(torch.relu(raw)).expand(k, -1, -1, -1)
        for n, (height, width) in enumerate(sizes):
            maps = raw[:, n]
            if fp.canvas is not None:  # resize to the padded canvas at the image's scale, crop the padding
                (ph, pw), resized = fp.canvas
                rh, rw = resized[n]
                full = (max(height, round(ph * height / rh)), max(width, round(pw * width / rw)))
            else:
                full = (height, width)
            maps = F.interpolate(maps[:, None], size=full, mode="bilinear", align_corners=False)[:, 0]
            maps = maps[:, :height, :width]
            per_image[n] = maps if per_image[n] is None else per_image[n] + maps
    return [_minmax(torch.relu(m / len(activations))).float().cpu() for m in per_image]
