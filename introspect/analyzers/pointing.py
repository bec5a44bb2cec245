"""The pointing game: does a class activation map's peak fall on the object that decides the class?

Needs images whose evidence location is known (e.g. :mod:`introspect.testing.synthetic`).
Every map is of the image's *true* class (one class per image, so each image gets
its own target in one batched gradient call), with the CAM methods computed here
(not delegated to pytorch-grad-cam) from one shared forward pass per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError
from ..engine.forward import run_forward
from ..inputs import prepare_inputs
from ..records import PointingGame
from ..engine.targets import TrueLabel
from ..layers import pick_cam_layer
from ..engine.cam import CAM_METHODS, cams_from_pass, needs_layer_gradient, parse_cam_methods

__all__ = ["GRADIENT_METHODS", "COMPUTED_METHODS", "pointing_game"]

COMPUTED_METHODS: tuple[str, ...] = tuple(n for n, m in CAM_METHODS.items() if not m.delegated)
"""Every CAM method computed here from the shared forward pass (none delegated to pytorch-grad-cam)."""

GRADIENT_METHODS: tuple[str, ...] = tuple(n for n in COMPUTED_METHODS if CAM_METHODS[n].uses_gradients)
"""The gradient family among them (class-specific maps)."""


def pointing_game(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    boxes: torch.Tensor | np.ndarray,
    methods: str | Sequence[str] = COMPUTED_METHODS,
    layer: str | None = None,
    batch_size: int = 100,
) -> PointingGame:
    """Peaks of each method's map of ``classes[n]`` on ``images[n]`` (normalised, as the model eats them).

    ``boxes`` are ``(x0, y0, x1, y1)`` with exclusive upper bounds, in the images' pixels.
    Example: ``pointing_game(model, normalize(test.images), test.labels, test.boxes).fraction("gradcam")``.

    Args:
        model: the module.
        images: ``(N, 3, H, W)`` normalised images.
        classes: ``(N,)`` the class whose evidence each image holds.
        boxes: ``(N, 4)`` the evidence's box per image.
        methods: CAM method names (default: every method computed here).
        layer: the target layer's name (default: picked from the model's structure).
        batch_size: images per forward pass.

    Returns:
        A :class:`~introspect.records.PointingGame` (peaks and boxes; ask it for ``fraction(method)``).

    Raises:
        ArgumentError: ``images``, ``classes`` and ``boxes`` differ in length.
        UnknownMethodError: an unknown method name.
        UnknownLayerError: ``layer`` is not a layer of the model.
    """
    names = parse_cam_methods(methods)
    classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
    boxes = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.int64).reshape(-1, 4)
    if not len(images) == len(classes) == len(boxes):
        raise ArgumentError(f"{len(images)} images, {len(classes)} classes and {len(boxes)} boxes: give one of each "
                            "per image", parameter="boxes")
    choice = pick_cam_layer(model, layer, input_size=tuple(images.shape[-2:]))
    needs_grad = needs_layer_gradient(names)
    peaks = np.zeros((len(names), len(images), 2), dtype=np.int64)
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        batch = prepare_inputs(images[start:stop])
        forward = run_forward(model, batch.tensor, capture=[choice.name],
                              grad_layer=choice.name if needs_grad else None)
        try:
            num_classes = forward.logits.shape[-1]
            categories = [f"class {i}" for i in range(num_classes)]
            results = cams_from_pass(model, forward, batch, names, choice, TrueLabel.per_image(classes[start:stop], forward.logits),
                                     categories)
        finally:
            forward.release()
        for k, name in enumerate(names):
            peaks[k, start:stop] = [r.maps[0].peak for r in results if r.method == name]
    return PointingGame(methods=tuple(names), peaks=peaks, boxes=boxes)
