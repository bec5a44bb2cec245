"""Class activation maps: Grad-CAM and its family, with one registry of methods.

Each method is either *computed here* or *delegated*:

- computed here (``CamMethod.compute`` is a formula): methods that need only the
  target layer's activation and its gradient (the gradient family, and EigenCAM/FEM
  that need the activation alone) are computed from one shared forward pass
  (:mod:`introspect.forward`): gradients flow only from the class scores back to the
  target layer, for every class and image at once. Their maps equal pytorch-grad-cam's
  (same formulas, same normalisation, same bilinear resize).
- delegated (``CamMethod.compute`` is None): methods that need many forward passes
  (Score-CAM, Ablation-CAM, FullGrad, ...) are run by pytorch-grad-cam's class
  ``CamMethod.delegate``, batched over classes, inside
  :func:`introspect.hooks.inspecting` so the model comes back untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError, IntrospectWarning, MethodFailedError, UnknownMethodError
from ..forward import ForwardPass, run_forward
from ..hooks import inspecting
from ..inputs import InputBatch, Inputs, prepare_inputs
from ..layers import LayerChoice, pick_cam_layer, resolve_layer, to_nchw
from ..loaded import LoadedModel, unwrap
from ..records import CamMap, CamResult, Subject
from ..engine.classes import class_name, top_classes
from ..options import CamOptions

__all__ = ["CamMethod", "CamFormula", "CAM_METHODS", "list_cam_methods", "parse_cam_methods", "cam",
           "cams_from_pass", "cam_maps", "needs_layer_gradient", "normalize_cam", "activation_maps"]

# A formula maps (activations A: (N, C, H, W), gradients G: (k, N, C, H, W) or None) to raw maps (k|1, N, H, W).
CamFormula = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class CamMethod:
    """One CAM method: its name, what it needs, and who computes it.

    Attributes:
        name: the registry key (what ``methods=`` takes).
        summary: one line for ``--help`` and the README.
        delegate: the pytorch-grad-cam class whose maps this method's equal; it runs the
            method when ``compute`` is None.
        uses_gradients: whether the maps need the class score's gradient at the layer.
        compute: the formula computed here from the shared forward pass, or None
            when the method is delegated to pytorch-grad-cam.
    """

    name: str
    summary: str
    delegate: str
    uses_gradients: bool
    compute: CamFormula | None = None

    @property
    def delegated(self) -> bool:
        """Whether pytorch-grad-cam computes the maps (with its own forward passes)."""
        return self.compute is None


def _spatial_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(-2, -1), keepdim=True)


def _gradcam(a, g):
    return (g.mean(dim=(-2, -1), keepdim=True) * a).sum(dim=2)


def _hirescam(a, g):
    return (g * a).sum(dim=2)


def _elementwise(a, g):
    return torch.relu(g * a).sum(dim=2)


def _gradcam_pp(a, g):
    g2 = g * g
    g3 = g2 * g
    aij = g2 / (2 * g2 + _spatial_sum(a) * g3 + 1e-6)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    weights = _spatial_sum(torch.relu(g) * aij)
    return (weights * a).sum(dim=2)


def _xgradcam(a, g):
    weights = _spatial_sum(g * a / (_spatial_sum(a) + 1e-7))
    return (weights * a).sum(dim=2)


def _layercam(a, g):
    return (torch.relu(g) * a).sum(dim=2)


def _first_component(x: np.ndarray) -> np.ndarray:
    """Projection of each (C, H, W) map on its first principal component, up to sign (callers fix the sign).

    pytorch-grad-cam takes an SVD of the centred (H*W, C) matrix X; X v1 = s1 u1, so the projection
    is the top eigenvector of the small Gram matrix (X X^T, or X^T X when C is the smaller side)
    scaled by its singular value: the same map, in float64, without an SVD per class and image.
    """
    data = torch.from_numpy(np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0)).double()
    flat = data.reshape(data.shape[0], data.shape[1], -1).transpose(1, 2)  # (B, H*W, C)
    flat = flat - flat.mean(dim=1, keepdim=True)
    if flat.shape[1] <= flat.shape[2]:
        values, vectors = torch.linalg.eigh(flat @ flat.transpose(1, 2))
        projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    else:
        _, vectors = torch.linalg.eigh(flat.transpose(1, 2) @ flat)
        projection = (flat @ vectors[..., -1:])[..., 0]
    return projection.float().reshape(x.shape[0], *x.shape[2:]).numpy()


def _eigencam(a, g):
    projection = _first_component(a.cpu().numpy())
    # The SVD's sign is arbitrary (pytorch-grad-cam leaves it, and about a third of its maps come out
    # inverted): make the side with the larger magnitude positive, as its own Seg-Eigen-CAM does (Eq. 13).
    flip = np.abs(projection.min(axis=(-2, -1))) > np.abs(projection.max(axis=(-2, -1)))
    projection[flip] *= -1
    return torch.from_numpy(projection)[None]


def _eigengradcam(a, g):
    product = g * a
    flat = product.cpu().numpy()
    projection = _first_component(flat.reshape(-1, *flat.shape[2:])).reshape(*flat.shape[:2], *flat.shape[3:])
    # Fix the SVD's arbitrary sign by the class evidence: the projection must agree with
    # the sum of gradient x activation over channels (HiResCAM's map) where the class is.
    evidence = product.sum(dim=2).cpu().numpy()
    flip = (projection * evidence).sum(axis=(-2, -1)) < 0
    projection[flip] *= -1
    return torch.from_numpy(projection)


def _fem(a, g, k: float = 2.0):
    means = a.mean(dim=(-2, -1), keepdim=True)
    stds = a.std(dim=(-2, -1), keepdim=True, unbiased=False)
    weights = (a > means + k * stds).float().mean(dim=(-2, -1), keepdim=True)
    return (weights * a).sum(dim=1)[None]


def _register(*methods: CamMethod) -> dict[str, CamMethod]:
    return {m.name: m for m in methods}


CAM_METHODS: dict[str, CamMethod] = _register(
    CamMethod("gradcam", "channel weights = mean gradient (Selvaraju et al. 2017)", "GradCAM", True, _gradcam),
    CamMethod("hirescam", "gradient x activation, summed over channels", "HiResCAM", True, _hirescam),
    CamMethod("gradcam++", "second-order channel weights (Chattopadhay et al. 2018)", "GradCAMPlusPlus", True,
              _gradcam_pp),
    CamMethod("xgradcam", "activation-normalised gradient weights (Fu et al. 2020)", "XGradCAM", True, _xgradcam),
    CamMethod("layercam", "positive gradients x activation, per location (Jiang et al. 2021)", "LayerCAM", True,
              _layercam),
    CamMethod("gradcamelementwise", "ReLU(gradient x activation) summed over channels", "GradCAMElementWise", True,
              _elementwise),
    CamMethod("eigengradcam", "first principal component of gradient x activation, sign set by the class "
              "evidence", "EigenGradCAM", True,
              _eigengradcam),
    CamMethod("eigencam", "first principal component of the activations, larger side positive "
              "(class-agnostic)", "EigenCAM", False,
              _eigencam),
    CamMethod("fem", "feature explanation method: channels weighted by their share of strong responses", "FEM",
              False, _fem),
    CamMethod("scorecam", "channel weights from the score of the masked input (many forward passes)", "ScoreCAM",
              False),
    CamMethod("ablationcam", "channel weights from the score drop when a channel is removed (many passes)",
              "AblationCAM", False),
    CamMethod("fullgrad", "full-gradient: input and every bias gradient (whole-model backward)", "FullGrad", True),
    CamMethod("kpcacam", "kernel-PCA of the activations (class-agnostic)", "KPCA_CAM", False),
    CamMethod("shapleycam", "gradient and Hessian-vector product weights (Shapley view)", "ShapleyCAM", True),
    CamMethod("finercam", "Grad-CAM of the score against its most similar classes", "FinerCAM", True),
    CamMethod("randomcam", "random channel weights: a baseline that explains nothing", "RandomCAM", True),
)

_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "grad-cam": "gradcam",
            "gradcam-elementwise": "gradcamelementwise", "score-cam": "scorecam", "eigen-cam": "eigencam",
            "kpca_cam": "kpcacam", "kpca-cam": "kpcacam"}


def list_cam_methods() -> list[str]:
    """Every CAM method name, in the registry's order.

    Returns:
        The keys of :data:`CAM_METHODS`.
    """
    return list(CAM_METHODS)


def parse_cam_methods(spec: str | Sequence[str]) -> list[str]:
    """Known CAM method names from a comma-separated string or a list (aliases resolved, duplicates dropped).

    Args:
        spec: e.g. ``"gradcam,layercam"`` or ``["gradcam", "gradcam++"]``.

    Returns:
        Registry keys, in the order given.

    Raises:
        UnknownMethodError: an unknown name (the message lists them all), or none at all.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in items:
        key = item.strip().lower()
        if not key:
            continue
        key = _ALIASES.get(key, key)
        if key not in CAM_METHODS:
            raise UnknownMethodError(f"unknown CAM method {item.strip()!r}: choose from {', '.join(CAM_METHODS)}")
        if key not in names:
            names.append(key)
    if not names:
        raise UnknownMethodError(f"no CAM method given: choose from {', '.join(CAM_METHODS)}")
    return names


def needs_layer_gradient(methods: Sequence[str]) -> bool:
    """Whether the shared forward pass must record the gradient at the target layer.

    Args:
        methods: CAM method names (registry keys).

    Returns:
        True when one of them is computed here from the layer's gradient.
    """
    return any(not CAM_METHODS[m].delegated and CAM_METHODS[m].uses_gradients for m in methods)


def normalize_cam(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's scaling of raw maps: ReLU, min-max, bilinear resize to the input, min-max again.

    Args:
        raw: ``(..., h, w)`` raw maps.
        size: ``(H, W)`` of the input images.

    Returns:
        float32 ``(..., H, W)`` maps in [0, 1].
    """
    maps = torch.relu(raw.float())
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, *maps.shape[-2:])
    flat = flat - flat.amin(dim=(-2, -1), keepdim=True)
    flat = flat / (1e-7 + flat.amax(dim=(-2, -1), keepdim=True))
    flat = F.interpolate(flat[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = flat - flat.amin(dim=(-2, -1), keepdim=True)
    flat = flat / (1e-7 + flat.amax(dim=(-2, -1), keepdim=True))
    return flat.reshape(*lead, *size)


def _normalize_nd(raw: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """:func:`normalize_cam` over the last ``len(size)`` axes: 2 (bilinear) or 3 (trilinear, a clip's T, H, W)."""
    if len(size) == 2:
        return normalize_cam(raw, size)
    dims = tuple(range(-len(size), 0))
    maps = torch.relu(raw.float())
    lead = maps.shape[:-len(size)]
    flat = maps.reshape(-1, *maps.shape[-len(size):])
    flat = flat - flat.amin(dim=dims, keepdim=True)
    flat = flat / (1e-7 + flat.amax(dim=dims, keepdim=True))
    flat = F.interpolate(flat[:, None], size=size, mode="trilinear", align_corners=False)[:, 0]
    flat = flat - flat.amin(dim=dims, keepdim=True)
    flat = flat / (1e-7 + flat.amax(dim=dims, keepdim=True))
    return flat.reshape(*lead, *size)


def activation_maps(method: str, activation: torch.Tensor, gradients: torch.Tensor | None,
                    size: Sequence[int] | None = None) -> torch.Tensor:
    """Maps of a method computed here, over activations of any spatial rank (2-d images, 3-d clips).

    Args:
        method: a method computed here (``not CAM_METHODS[name].delegated``).
        activation: (N, C, *S), S = (H, W) or (T, H, W).
        gradients: (k, N, C, *S) for the gradient methods, else None.
        size: resize the maps to this S (default: the layer's own size, normalised).

    Returns:
        (k, N, *size) maps in [0, 1] (k = 1 for the class-agnostic methods). A 3-d map's channel weights
        are taken over T, H and W together, as pytorch-grad-cam does for 5-d activations.

    Raises:
        UnknownMethodError: an unknown method, or one delegated to pytorch-grad-cam.
    """
    spec = CAM_METHODS[parse_cam_methods(method)[0]]
    if spec.delegated:
        raise UnknownMethodError(f"{spec.name} needs many forward passes through pytorch-grad-cam: pick one of "
                                 f"{', '.join(n for n, m in CAM_METHODS.items() if not m.delegated)}")
    spatial = tuple(activation.shape[2:])
    # Every formula reduces over the last two axes: lay all positions along one of them.
    flat_a = activation.float().reshape(*activation.shape[:2], -1, 1)
    flat_g = None
    if spec.uses_gradients:
        if gradients is None:
            raise UnknownMethodError(f"{spec.name} needs gradients=")
        flat_g = gradients.float().reshape(*gradients.shape[:3], -1, 1)
    raw = spec.compute(flat_a, flat_g)
    raw = raw.reshape(*raw.shape[:2], *spatial)
    return _normalize_nd(raw, tuple(size) if size is not None else spatial)


def _finite(tensor: torch.Tensor, what: str, notes: list[str]) -> torch.Tensor:
    if torch.isfinite(tensor).all():
        return tensor
    notes.append(f"{what} had NaN or Inf values; they were set to 0")
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)


def _maps_here(method: CamMethod, forward: ForwardPass, layer: LayerChoice, classes: torch.Tensor,
               size: tuple[int, int], notes: list[str]) -> torch.Tensor:
    activation = _finite(to_nchw(forward.activations[layer.name], layer).float(), "activations", notes)
    grads = None
    if method.uses_gradients:
        raw_grads = forward.gradients(classes)
        grads = torch.stack([to_nchw(g, layer) for g in raw_grads]).float()
        grads = _finite(grads, "gradients", notes)
        if not grads.abs().amax().item() > 0:
            notes.append(f"{method.name}: all gradients are zero at {layer.name}; the maps are blank")
    raw = method.compute(activation, grads)
    raw = _finite(raw, f"{method.name} maps", notes)
    return normalize_cam(raw, size).expand(classes.shape[1], -1, -1, -1)


def _finer_targets(logits: torch.Tensor, classes: torch.Tensor) -> list:
    """FinerCAM's targets for given classes: each class against the 3 classes whose scores are closest."""
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    k, n = classes.shape[1], classes.shape[0]
    targets = []
    for i in range(k * n):
        row, cls = logits[i % n], int(classes[i % n, i // n])
        nearest = torch.argsort((row - row[cls]).abs())
        comparisons = [int(c) for c in nearest if int(c) != cls][:3]
        targets.append(FinerWeightedTarget(cls, comparisons, alpha=1.0))
    return targets


def _delegated_maps(method: CamMethod, model: nn.Module, batch: torch.Tensor, layer: LayerChoice,
                    classes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Maps from pytorch-grad-cam for the methods it alone offers, all classes in one batch."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    k = classes.shape[1]
    n = batch.shape[0]
    repeated = batch.repeat(k, 1, 1, 1)
    if method.name == "finercam":
        targets = _finer_targets(logits.cpu(), classes.cpu())
    else:
        targets = [ClassifierOutputTarget(int(classes[i % n, i // n])) for i in range(k * n)]
    target_layer = resolve_layer(model, layer.name)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return to_nchw(t, layer)

    maps = None
    with inspecting(model):
        with getattr(pytorch_grad_cam, method.delegate)(model=model, target_layers=[target_layer],
                                                         reshape_transform=reshape) as explainer:
            if hasattr(explainer, "batch_size"):
                explainer.batch_size = 64
            maps = explainer(input_tensor=repeated, targets=targets)
    if maps is None:  # pytorch-grad-cam's context manager swallows an IndexError raised inside it
        raise MethodFailedError(f"pytorch-grad-cam's {method.delegate} failed with an IndexError on this model: "
                                "pick another method")
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    return torch.from_numpy(maps).reshape(k, n, *maps.shape[-2:])


def cam_maps(
    forward: ForwardPass,
    layer: LayerChoice,
    methods: Sequence[str],
    classes: torch.Tensor,
    size: tuple[int, int],
    *,
    model: nn.Module | None = None,
    inputs: torch.Tensor | None = None,
    notes: dict[str, list[str]] | None = None,
) -> dict[str, torch.Tensor]:
    """Normalised maps of every method, ``{method: (k, N, H, W)}`` in [0, 1] at ``size``, without drawing.

    The methods computed here come from ``forward`` (which captured ``layer``); the delegated ones
    need ``model`` and ``inputs`` (pytorch-grad-cam runs them). ``notes`` (if given) collects each method's warnings.

    Args:
        forward: a pass that captured ``layer`` (and recorded its gradient for the gradient family).
        layer: the CAM target layer.
        methods: method names (see :data:`CAM_METHODS`).
        classes: (N, k) class indices to explain.
        size: (H, W) of the maps, normally the input's.
    Returns:
        One float32 tensor (k, N, H, W) per method, on the forward pass's device.
    """
    maps: dict[str, torch.Tensor] = {}
    for name in parse_cam_methods(methods):
        method = CAM_METHODS[name]
        method_notes = notes.setdefault(name, []) if notes is not None else []
        if method.delegated:
            if model is None or inputs is None:
                raise ArgumentError(f"{name} is delegated to pytorch-grad-cam: it needs model= and inputs=", parameter="model")
            maps[name] = _delegated_maps(method, model, inputs, layer, classes, forward.logits)
        else:
            maps[name] = _maps_here(method, forward, layer, classes, size, method_notes)
    return maps


def cams_from_pass(
    model: nn.Module,
    forward: ForwardPass,
    batch: InputBatch,
    methods: Sequence[str],
    layer: LayerChoice,
    classes: torch.Tensor,
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
        classes: ``(N, k)`` class indices to explain, per image.
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
    all_maps = cam_maps(forward, layer, methods, classes, size, model=model, inputs=batch.tensor, notes=notes)
    for name, maps in all_maps.items():
        maps = maps.cpu().numpy()
        for n, image_name in enumerate(batch.names):
            entries = []
            for j in range(classes.shape[1]):
                index = int(classes[n, j])
                heatmap = maps[j, n].astype(np.float32)
                label = class_name(categories, index)
                prob = float(probs[n, index])
                entries.append(CamMap(method=name, subject=Subject("class", index, label, prob),
                                      heatmap=heatmap, image=overlay(batch.photos[n], heatmap, colormap)))
            panel = labelled_row([e.image for e in entries], [e.subject.caption for e in entries])
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
