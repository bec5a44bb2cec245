"""Class activation maps of a model's inputs: :func:`cam`.

The CAM core (the method registry, the formulas, the one normaliser, ``cam_maps``, a classifier's
``cams_from_pass``) lives in :mod:`introspect.engine.cam` and is re-exported here (``from introspect.analyzers.cam import
CAM_METHODS`` works as before). :func:`cam` goes the one run path: the model's task reads the
inputs, runs the one forward pass and returns its CAM results.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..engine.cam import (CAM_METHODS, CamFormula, CamMethod, activation_maps, cam_maps, cams_from_pass,
                          list_cam_methods, needs_layer_gradient, normalize_maps, parse_cam_methods, scaled_maps,
                          single_pass_methods)
from ..inputs import Inputs
from ..loaded import LoadedModel
from ..options import CamOptions
from ..records import CamResult

__all__ = ["CamMethod", "CamFormula", "CAM_METHODS", "list_cam_methods", "parse_cam_methods", "cam",
           "cams_from_pass", "cam_maps", "needs_layer_gradient", "normalize_maps", "activation_maps",
           "single_pass_methods", "scaled_maps"]


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
