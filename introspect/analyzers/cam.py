"""Class activation maps of a model's inputs: :func:`cam`, and the CAM records of a classifier's pass.

The CAM core (the method registry, the formulas, the one normaliser, ``cam_maps``) lives in
:mod:`introspect.engine.cam` and is re-exported here (``from introspect.analyzers.cam import
CAM_METHODS`` works as before). :func:`cam` goes the one run path: the model's task reads the
inputs, runs the one forward pass and returns its CAM results.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..engine.cam import (CAM_METHODS, CamFormula, CamMethod, activation_maps, cam_maps, list_cam_methods,
                          needs_layer_gradient, normalize_maps, parse_cam_methods, scaled_maps, single_pass_methods)
from ..engine.forward import ForwardPass
from ..engine.targets import Target, as_targets
from ..errors import IntrospectWarning
from ..inputs import InputBatch, Inputs
from ..layers import LayerChoice
from ..models import LoadedModel
from ..options import CamOptions
from ..records import CamMap, CamResult
from .predictions import class_name

__all__ = ["CamMethod", "CamFormula", "CAM_METHODS", "list_cam_methods", "parse_cam_methods", "cam",
           "cams_from_pass", "cam_maps", "needs_layer_gradient", "normalize_maps", "activation_maps",
           "single_pass_methods", "scaled_maps"]


def cams_from_pass(
    model: nn.Module,
    forward: ForwardPass,
    batch: InputBatch,
    methods: Sequence[str],
    layer: LayerChoice,
    targets: Sequence[Sequence[Target]] | torch.Tensor,
    categories: Sequence[str],
    colormap: str = CamOptions.colormap,
) -> list[CamResult]:
    """CAM results for every method and image of a batch that went through the shared forward pass.

    Args:
        model: the module (delegated methods run it again).
        forward: the pass over ``batch`` that captured ``layer`` (and recorded its gradient
            when :func:`needs_layer_gradient` says so).
        batch: the images.
        methods: CAM method names.
        layer: the target layer.
        targets: per image, its k class targets (each with an ``index``), or an ``(N, k)`` tensor of class
            indices (``ClassScore`` targets).
        categories: class names (``class N`` where missing).
        colormap: matplotlib colormap of the overlays.

    Returns:
        One :class:`CamResult` per method and image, methods outer.

    Raises:
        UnknownMethodError: an unknown method name.
        MethodFailedError: pytorch-grad-cam failed on this model.
    """
    from ..drawing import labelled_row, overlay

    size = tuple(batch.tensor.shape[-2:])
    probs = forward.probabilities.cpu()
    results = []
    notes: dict[str, list[str]] = {}
    targets = as_targets(targets)
    all_maps = cam_maps(forward, layer, methods, targets, size, model=model, inputs=batch.tensor, notes=notes)
    for name, maps in all_maps.items():
        maps = maps.cpu().numpy()
        for n, image_name in enumerate(batch.names):
            entries = []
            for j, target in enumerate(targets[n]):
                index = int(target.index)
                heatmap = maps[j, n].astype(np.float32)
                label = class_name(categories, index)
                prob = float(probs[n, index])
                entries.append(CamMap(method=name, class_index=index, class_name=label, probability=prob,
                                      heatmap=heatmap, image=overlay(batch.photos[n], heatmap, colormap)))
            panel = labelled_row([e.image for e in entries], [f"{e.class_name} {e.probability:.1%}" for e in entries])
            results.append(CamResult(method=name, layer=layer.name, image_name=image_name, maps=tuple(entries),
                                     image=panel, warnings=tuple(notes.get(name, ()))))
        for note in notes.get(name, ()):
            warnings.warn(f"{name}: {note}", IntrospectWarning, stacklevel=2)
    return results


def cam(
    model: nn.Module | LoadedModel,
    inputs: Inputs,
    methods: str | Sequence[str] | None = CamOptions.methods,
    layer: str | None = None,
    targets: Sequence[int | str] | None = None,
    topk: int = CamOptions.topk,
    categories: Sequence[str] | None = None,
    colormap: str = CamOptions.colormap,
) -> list[CamResult]:
    """Class activation maps of ``inputs`` for the top-k classes (or ``targets``), one result per method and image.

    Every task goes the same way (its inputs, one forward pass, its targets): a detector's result holds a
    map per top detection (its box score), a segmenter's a map per class present, a video model's a
    map over the clip's frames. Example: ``introspect.cam(loaded, "cat.png", "gradcam,layercam")[0].to_pil()``.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        inputs: image paths, folders, PIL images or a normalised tensor (see
            :func:`~introspect.inputs.prepare_inputs`).
        methods: CAM method names, a list or comma-separated (see :data:`CAM_METHODS`); default: gradcam,
            or eigencam for an int8 quantized model (whose kernels have no autograd; gradient methods are refused).
        layer: the target layer's name (default: picked from the model's structure).
        targets: classes to explain in every image, by index or name (default: each image's top-k).
        topk: how many top classes to explain when ``targets`` is not given.
        categories: class names (default: the loaded model's).
        colormap: matplotlib colormap of the overlays.

    Returns:
        One :class:`~introspect.records.CamResult` per method and image, methods outer.

    Raises:
        UnknownMethodError: an unknown method name.
        UnknownLayerError: ``layer`` is not a layer of the model.
        TargetError: a target out of range or not a class name.
        ImageError: an input image cannot be loaded.
        MethodFailedError: pytorch-grad-cam failed on this model.
    """
    from .batch import one_batch

    options = CamOptions(methods=methods, layer=layer, targets=targets, topk=topk, colormap=colormap)
    with one_batch(model, inputs, categories=categories, cam=options,
                   prepare=(lambda ctx: ctx.task.prepare_cams(ctx),)) as ctx:
        return ctx.task.cam_results(ctx)
