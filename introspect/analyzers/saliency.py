"""Saliency: gradients of a class score with respect to the input pixels.

- ``vanilla``: |d score / d input|, max over colour channels (Simonyan et al. 2014).
- ``guided``: guided backpropagation (Springenberg et al. 2015): every ReLU passes back
  only positive gradients, and only where its input was positive.
- ``guidedgradcam``: guided backpropagation times the Grad-CAM map of the same class
  (Selvaraju et al. 2017).

Two passes of the one forward engine (:func:`~introspect.engine.forward.run_forward`, the
input as the gradient leaf) serve all three: a plain one, whose one batched backward over
every class gives both the input gradient and the Grad-CAM gradient at the target layer
(its second leaf), and (for the guided methods) one with a full backward hook on every
ReLU that clamps its input gradient at zero. No module is swapped: in-place ReLUs are
switched to out-of-place for the pass and switched back after it. Nothing is written
into any ``.grad``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError, IntrospectWarning, UnknownMethodError
from ..hooks import ModelScope
from ..inputs import InputBatch, Inputs
from ..layers import LayerChoice, to_nchw
from ..loaded import LoadedModel
from ..records import SaliencyMap, SaliencyResult
from ..engine.cam import CAM_METHODS, normalize_maps
from ..engine.classes import class_name
from ..engine.forward import INPUT, run_forward
from ..options import CamOptions, SaliencyOptions

__all__ = ["SALIENCY_METHODS", "parse_saliency_methods", "saliency", "saliency_from_pass", "guided_relus"]

SALIENCY_METHODS: dict[str, str] = {
    "vanilla": "|d score / d input|, max over colour channels (Simonyan et al. 2014)",
    "guided": "guided backpropagation: ReLUs pass back only positive gradients (Springenberg et al. 2015)",
    "guidedgradcam": "guided backpropagation x Grad-CAM map (Selvaraju et al. 2017)",
}

_ALIASES = {"gradient": "vanilla", "guidedbackprop": "guided", "guided-backprop": "guided",
            "guided-gradcam": "guidedgradcam", "guided_gradcam": "guidedgradcam"}

_GUIDED_TYPES = (nn.ReLU, nn.ReLU6)


def parse_saliency_methods(spec: str | Sequence[str]) -> list[str]:
    """Known saliency method names from a comma-separated string or a list (aliases resolved, duplicates dropped).

    Args:
        spec: e.g. ``"vanilla,guided"`` or ``["guidedgradcam"]``.

    Returns:
        Keys of :data:`SALIENCY_METHODS`, in the order given.

    Raises:
        UnknownMethodError: an unknown name (the message lists them all), or none at all.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        key = _ALIASES.get(item.strip().lower(), item.strip().lower())
        if not key:
            continue
        if key not in SALIENCY_METHODS:
            raise UnknownMethodError(f"unknown saliency method {item.strip()!r}: choose from "
                                     f"{', '.join(SALIENCY_METHODS)}")
        if key not in names:
            names.append(key)
    if not names:
        raise UnknownMethodError(f"no saliency method given: choose from {', '.join(SALIENCY_METHODS)}")
    return names


def _clamp_to_positive(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
    return tuple(None if g is None else g.clamp(min=0.0) for g in grad_input)


def guided_relus(scope: ModelScope, model: nn.Module) -> int:
    """Make every ReLU/ReLU6 of ``model`` guided (positive gradients only) for the scope's lifetime.

    In-place ReLUs are made out-of-place (full backward hooks cannot wrap an in-place
    op); the scope puts the flag back on exit.

    Args:
        scope: the :class:`~introspect.hooks.ModelScope` of an ``inspecting(model)`` block.
        model: the module.

    Returns:
        How many ReLU/ReLU6 modules were made guided.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, _GUIDED_TYPES):
            if getattr(module, "inplace", False):
                scope.set_attribute(module, "inplace", False)
            scope.full_backward_hook(module, _clamp_to_positive)
            count += 1
    return count


def _input_gradients(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor, guided: bool,
                     layer: str | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, int]:
    """One pass of the engine with the input as the leaf (and ``layer``'s output as a second one): (gradients
    {"": d score / d input (k, N, 3, H, W), layer: d score / d layer (k, ...)}, values {"": input, layer:
    activation}, probabilities (N, classes), guided ReLUs)."""
    relus: list[int] = []

    def make_guided(scope: ModelScope) -> None:
        relus.append(guided_relus(scope, model))

    forward = run_forward(model, inputs, grad_layer=INPUT, extra_leaves=(layer,) if layer is not None else (),
                          prepare=make_guided if guided else None, names={"extra_leaves": "layer"})
    try:
        grads = {name: grad.detach() for name, grad in forward.gradients(classes).items()}
        return grads, forward.maps(), forward.probabilities, relus[0] if relus else 0
    finally:
        forward.release()


def _magnitude(gradient: np.ndarray) -> np.ndarray:
    return np.abs(gradient).max(axis=0).astype(np.float32)


def _draw_magnitude(saliency: np.ndarray) -> np.ndarray:
    from ..drawing import normalize01

    hi = float(np.percentile(saliency, 99.5)) if saliency.size else 0.0
    grey = normalize01(np.clip(saliency, 0.0, hi) if hi > 0 else saliency)
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _draw_signed(gradient: np.ndarray) -> np.ndarray:
    """The usual guided-backprop picture: standardised, squeezed around mid-grey (pytorch-grad-cam's)."""
    g = gradient.transpose(1, 2, 0).astype(np.float64)
    g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
    return (np.clip(g, 0.0, 1.0) * 255).round().astype(np.uint8)


def saliency_from_pass(
    model: nn.Module,
    batch: InputBatch,
    methods: Sequence[str],
    classes: torch.Tensor,
    categories: Sequence[str],
    layer: LayerChoice | None = None,
    probabilities: torch.Tensor | None = None,
) -> list[SaliencyResult]:
    """Saliency results for every method and image of a batch that went through the shared forward pass.

    Args:
        model: the module.
        batch: the images.
        methods: saliency method names (see :data:`SALIENCY_METHODS`).
        classes: ``(N, k)`` class indices to explain, per image.
        categories: class names (``class N`` where missing).
        layer: the Grad-CAM target layer (needed only for ``guidedgradcam``).
        probabilities: ``(N, classes)`` softmax of the shared forward pass (one more
            forward pass when None).

    Returns:
        One :class:`SaliencyResult` per method and image, methods outer.

    Raises:
        UnknownMethodError: an unknown method name.
        ArgumentError: ``guidedgradcam`` asked for without ``layer``.
    """
    from ..drawing import labelled_panels

    names = parse_saliency_methods(methods)
    inputs = batch.tensor
    classes = classes.to(torch.long)
    notes: list[str] = []
    gradients: dict[str, torch.Tensor] = {}
    if "guidedgradcam" in names and layer is None:
        raise ArgumentError("layer=None: guidedgradcam needs the Grad-CAM target layer, pass layer=",
                            parameter="layer")
    cam_layer = layer.name if "guidedgradcam" in names else None
    plain, values, plain_probabilities, _ = _input_gradients(model, inputs, classes, guided=False, layer=cam_layer)
    gradients["vanilla"] = plain[""]
    if {"guided", "guidedgradcam"} & set(names):
        guided_grads, _, _, relus = _input_gradients(model, inputs, classes, guided=True, layer=None)
        if relus == 0:
            notes.append("the model has no nn.ReLU/ReLU6 modules: guided backpropagation equals the plain gradient")
        guided = gradients["guided"] = guided_grads[""]
        if cam_layer is not None:
            a = to_nchw(values[cam_layer], layer).float()
            g = torch.stack([to_nchw(t, layer) for t in plain[cam_layer]]).float()
            cams = normalize_maps(CAM_METHODS["gradcam"].compute(a, g), tuple(inputs.shape[-2:]))  # (k, N, H, W)
            gradients["guidedgradcam"] = guided * cams[:, :, None].to(guided.device)
    probs = (plain_probabilities if probabilities is None else probabilities).detach().cpu()

    results = []
    for method in names:
        grads = torch.nan_to_num(gradients[method].float()).cpu().numpy()  # (k, N, 3, H, W)
        for n, image_name in enumerate(batch.names):
            entries = []
            for j in range(classes.shape[1]):
                index = int(classes[n, j])
                gradient = grads[j, n].astype(np.float32)
                magnitude = _magnitude(gradient)
                picture = _draw_magnitude(magnitude) if method == "vanilla" else _draw_signed(gradient)
                entries.append(SaliencyMap(method=method, class_index=index, class_name=class_name(categories, index),
                                           probability=float(probs[n, index]), gradient=gradient,
                                           saliency=magnitude, image=picture))
            panel = labelled_panels([e.image for e in entries],
                                    [f"{e.class_name} {e.probability:.1%}" for e in entries])
            results.append(SaliencyResult(method=method, image_name=image_name, maps=tuple(entries), image=panel,
                                          warnings=tuple(notes) if method != "vanilla" else ()))
    for note in dict.fromkeys(notes):
        warnings.warn(f"saliency: {note}", IntrospectWarning, stacklevel=2)
    return results


def saliency(
    model: nn.Module | LoadedModel,
    inputs: Inputs,
    methods: str | Sequence[str] = SaliencyOptions.methods,
    targets: Sequence[int | str] | None = None,
    topk: int = SaliencyOptions.topk,
    layer: str | None = None,
    categories: Sequence[str] | None = None,
) -> list[SaliencyResult]:
    """Input-gradient maps of ``inputs`` for the top-k classes (or ``targets``), one result per method and image.

    Example: ``introspect.saliency(loaded, "cat.png", "vanilla,guided")[0].to_pil()``.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        inputs: image paths, folders, PIL images or a normalised tensor.
        methods: saliency method names, a list or comma-separated (see :data:`SALIENCY_METHODS`).
        targets: classes to explain in every image, by index or name (default: each image's top-k).
        topk: how many top classes to explain when ``targets`` is not given.
        layer: the Grad-CAM target layer for ``guidedgradcam`` (default: picked from the model).
        categories: class names (default: the loaded model's).

    Returns:
        One :class:`~introspect.records.SaliencyResult` per method and image, methods outer.

    Raises:
        UnknownMethodError: an unknown method name.
        UnknownLayerError: ``layer`` is not a layer of the model.
        TargetError: a target out of range or not a class name.
        ImageError: an input image cannot be loaded.
    """
    from ..tasks.base import NEEDS
    from .batch import loaded_model, one_batch, require

    loaded = loaded_model(model, categories)
    require(loaded, "saliency", NEEDS["saliency"])
    method_names = parse_saliency_methods(methods)
    options = CamOptions(layer=layer, targets=targets)
    with one_batch(loaded, inputs, cam=options) as ctx:
        choice = ctx.task.cam_layer(ctx) if "guidedgradcam" in method_names else None
        classes = ctx.task.classes(ctx, topk)
        return saliency_from_pass(ctx.model, ctx.batch, method_names, classes, ctx.loaded.categories, choice,
                                  probabilities=ctx.forward.probabilities)
