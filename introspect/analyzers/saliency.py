"""Saliency: gradients of a class score with respect to the input pixels.

- ``vanilla``: |d score / d input|, max over colour channels (Simonyan et al. 2014).
- ``guided``: guided backpropagation (Springenberg et al. 2015): every ReLU passes back
  only positive gradients, and only where its input was positive.
- ``guidedgradcam``: guided backpropagation times the Grad-CAM map of the same class
  (Selvaraju et al. 2017).

Two forward passes per batch serve all three: a plain one, whose single
``torch.autograd.grad`` call per class gives both the input gradient and the
Grad-CAM gradient at the target layer, and (for the guided methods) one with a full
backward hook on every ReLU that clamps its input gradient at zero. No module is
swapped: in-place ReLUs are switched to out-of-place for the scope's lifetime and
switched back on exit. Nothing is written into any ``.grad``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError, IntrospectWarning, UnknownMethodError
from ..hooks import first_tensor, inspecting
from ..inputs import InputBatch, Inputs
from ..layers import LayerChoice, resolve_layer, to_nchw
from ..loaded import LoadedModel, device_and_dtype
from ..records import SaliencyMap, SaliencyResult
from ..engine.cam import CAM_METHODS, normalize_maps
from ..engine.classes import class_name
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


def guided_relus(scope, model: nn.Module) -> int:
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
                     layer: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
    """(d score / d input (k, N, 3, H, W), layer activation, d score / d layer (k, ...), guided ReLUs)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, output: object):
        captured["activation"] = first_tensor(output)
        if isinstance(output, torch.Tensor):  # later in-place ops then cannot rewrite the captured tensor
            return output.clone()
        return None

    x = inputs.detach().clone().requires_grad_(True)
    with inspecting(model) as scope, torch.enable_grad():
        relus = guided_relus(scope, model) if guided else 0
        if layer is not None:
            scope.forward_hook(layer, keep)
        scores = first_tensor(model(x))
        activation = captured.get("activation") if layer is not None else None
        wanted = [x] if activation is None else [x, activation]
        input_grads, layer_grads = [], []
        rows = torch.arange(scores.shape[0], device=scores.device)
        for j in range(classes.shape[1]):
            picked = scores[rows, classes[:, j].to(scores.device)].sum()
            grads = torch.autograd.grad(picked, wanted, retain_graph=j + 1 < classes.shape[1], allow_unused=True)
            input_grads.append(torch.zeros_like(x) if grads[0] is None else grads[0])
            if activation is not None:
                layer_grads.append(torch.zeros_like(activation) if grads[1] is None else grads[1])
    stacked_layer = torch.stack(layer_grads).detach() if layer_grads else None
    return (torch.stack(input_grads).detach(), None if activation is None else activation.detach(), stacked_layer,
            relus)


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
    device, dtype = device_and_dtype(model)
    inputs = batch.tensor.to(device=device, dtype=dtype)
    classes = classes.to(torch.long)
    notes: list[str] = []
    gradients: dict[str, torch.Tensor] = {}
    cam_module = resolve_layer(model, layer.name) if layer is not None and "guidedgradcam" in names else None
    plain, activation, layer_grads, _ = _input_gradients(model, inputs, classes, guided=False, layer=cam_module)
    gradients["vanilla"] = plain
    if {"guided", "guidedgradcam"} & set(names):
        guided, _, _, relus = _input_gradients(model, inputs, classes, guided=True, layer=None)
        if relus == 0:
            notes.append("the model has no nn.ReLU/ReLU6 modules: guided backpropagation equals the plain gradient")
        gradients["guided"] = guided
        if "guidedgradcam" in names:
            if cam_module is None:
                raise ArgumentError("layer=None: guidedgradcam needs the Grad-CAM target layer, pass layer=",
                                    parameter="layer")
            a = to_nchw(activation, layer).float()
            g = torch.stack([to_nchw(t, layer) for t in layer_grads]).float()
            cams = normalize_maps(CAM_METHODS["gradcam"].compute(a, g), tuple(inputs.shape[-2:]))  # (k, N, H, W)
            gradients["guidedgradcam"] = guided * cams[:, :, None].to(guided.device)
    if probabilities is None:
        with inspecting(model), torch.inference_mode():
            probabilities = torch.softmax(first_tensor(model(inputs)).float(), dim=-1)
    probs = probabilities.detach().cpu()

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
