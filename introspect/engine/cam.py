"""Class activation maps: the CAM core, with one registry of methods.

Each method is either *computed here* or *delegated*:

- computed here (``CamMethod.compute`` is a formula): methods that need only the
  target layer's activation and its gradient (the gradient family, and EigenCAM/FEM
  that need the activation alone) are computed from one shared forward pass
  (:mod:`introspect.engine.forward`): gradients flow only from the target scores back to the
  target layer, for every target and image at once. Their maps equal pytorch-grad-cam's
  (same formulas, same normalisation, same bilinear resize).
- delegated (``CamMethod.compute`` is None): methods that need many forward passes
  (Score-CAM, Ablation-CAM, FullGrad, ...) are run by pytorch-grad-cam's class
  ``CamMethod.delegate``, batched over targets, inside
  :func:`introspect.hooks.inspecting` so the model comes back untouched.

:func:`normalize_maps` is the one normaliser (pytorch-grad-cam's scaling of one layer, and
its mean over several), over 2-d maps and a clip's 3-d ones. What a map explains is a target
(:mod:`introspect.engine.targets`); a method that explains something else than the target
asked for carries its target factory (``CamMethod.retarget``: FinerCAM).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError, IntrospectWarning, MethodFailedError, StateError, UnknownMethodError
from ..hooks import inspecting
from ..inputs import InputBatch
from ..layers import LayerChoice, resolve_layer, to_nchw
from ..options import CamOptions
from ..records import CamMap, CamResult, Subject
from .classes import class_name
from .forward import ForwardPass, batching_pays, gradients, target_gradients
from .resize import bilinear_resize_sum
from .targets import FinerContrast, Target, as_targets

__all__ = ["CamMethod", "CamFormula", "CAM_METHODS", "list_cam_methods", "parse_cam_methods", "needs_layer_gradient",
           "single_pass_methods", "normalize_maps", "activation_maps", "scaled_maps", "score_maps", "cam_maps",
           "cams_from_pass"]

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
        retarget: the target factory of a method that explains something else than the target asked
            for: ``retarget(target, output)`` -> the target it explains, given that image's output
            (FinerCAM: the class against its nearest classes, :meth:`FinerContrast.nearest`); None: the
            target as asked.
    """

    name: str
    summary: str
    delegate: str
    uses_gradients: bool
    compute: CamFormula | None = None
    retarget: Callable[[Any, torch.Tensor], Any] | None = None

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
    CamMethod("finercam", "Grad-CAM of the score against its most similar classes", "FinerCAM", True,
              retarget=FinerContrast.nearest),
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


def _minmax(maps: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    maps = maps - maps.amin(dim=dims, keepdim=True)
    return maps / (1e-7 + maps.amax(dim=dims, keepdim=True))


def _minmax_(maps: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """:func:`_minmax` in place (``maps`` is a fresh tensor of the caller's)."""
    maps.sub_(maps.amin(dim=dims, keepdim=True))
    return maps.div_(maps.amax(dim=dims, keepdim=True).add_(1e-7))


def normalize_maps(raw: torch.Tensor | Sequence[torch.Tensor], size: Sequence[int], *,
                   canvas: Sequence[int] | None = None) -> torch.Tensor:
    """pytorch-grad-cam's scaling of raw maps, and its mean over several target layers: the one normaliser.

    Over the last ``len(size)`` axes (2: (H, W), resized bilinearly; 3: a clip's (T, H, W), trilinearly).
    Each level (``raw``, or each tensor of a sequence of them: an FPN's levels, each at its own
    resolution) is ReLU'd, min-maxed and resized to ``size``; then the mean over the levels is ReLU'd
    and min-maxed. One level: ReLU, min-max, resize, min-max, pytorch-grad-cam's one target layer.
    A 2-d resize is two matrix products, the levels' resizes summed in the second one
    (:func:`~introspect.engine.resize.bilinear_resize_sum`, the weights of ``F.interpolate``'s own bilinear resize):
    several times faster than ``F.interpolate`` for small maps, and one full-size tensor however many levels.

    Args:
        raw: ``(..., *s)`` raw maps, or a sequence of them (the same leading shape, any ``s``).
        size: the size of the maps, normally the input's.
        canvas: resize to this size and keep its top-left ``size`` (a detector's padded canvas at the
            input image's scale: the padding is cropped away); default: ``size``.

    Returns:
        float32 ``(..., *size)`` maps in [0, 1].
    """
    levels = [raw] if isinstance(raw, torch.Tensor) else list(raw)
    size = tuple(int(s) for s in size)
    dims = tuple(range(-len(size), 0))
    full = tuple(int(s) for s in canvas) if canvas is not None else size
    lead = levels[0].shape[:-len(size)]
    scaled = [_minmax(torch.relu(level if level.dtype == torch.float64 else level.float())  # half -> float
                      .reshape(-1, *level.shape[-len(size):]), dims) for level in levels]
    if len(size) == 2:  # the levels' resizes summed in one product
        total = bilinear_resize_sum(scaled, full, crop=size)
    else:
        total = None
        for maps in scaled:
            maps = F.interpolate(maps[:, None], size=full, mode="trilinear", align_corners=False)[:, 0]
            maps = maps[(slice(None), *(slice(0, s) for s in size))]
            total = maps if total is None else total.add_(maps)
    total = total.reshape(*lead, *size)
    if len(levels) > 1:  # the mean needs no ReLU: resized min-maxed maps are >= 0 (convex weights)
        total = total.div_(len(levels))
    return _minmax_(total, dims).float()


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
    return normalize_maps(raw, tuple(size) if size is not None else spatial)


def single_pass_methods(methods: str | Sequence[str], task: str) -> list[str]:
    """Known CAM method names that one forward pass serves; the others are refused in one line."""
    names = parse_cam_methods(methods)
    offered = [name for name, m in CAM_METHODS.items() if not m.delegated]
    for name in names:
        if CAM_METHODS[name].delegated:
            raise UnknownMethodError(f"CAM method {name!r} needs many forward passes and is not offered for "
                                     f"{task}: choose from {', '.join(offered)}")
    return names


def scaled_maps(method: str, forward: ForwardPass, grads: dict[str, torch.Tensor] | None, k: int,
                sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """The CAMs of one method over a pass's leaves: per image n, (k, H_n, W_n) float in [0, 1] over the input
    image's pixels.

    Per level (leaf), the method's formula (``CAM_METHODS[method].compute``); the levels of each image then
    go through :func:`normalize_maps` (pytorch-grad-cam's scaling and its multi-layer mean). Detectors resize
    and pad their inputs: each map is resized to the padded canvas at the input image's scale and the
    padding cropped away, so every heatmap lies over the input image's own pixels.
    """
    return _scaled_per_image(forward, _raw_levels(method, forward, grads, k), sizes)


def score_maps(methods: Sequence[str], forward: ForwardPass, scores: torch.Tensor,
               sizes: Sequence[tuple[int, int]]) -> dict[str, list[torch.Tensor]]:
    """Each method's maps of the (N, k) target ``scores`` over a pass's leaves, as :func:`scaled_maps` gives them
    (per image n, (k, H_n, W_n)).

    The gradient methods' raw maps are taken one target at a time (:func:`~introspect.engine.forward.target_gradients`),
    so the gradients of every target are never held together: a segmenter's 960-channel maps of 16 images take
    12 MB per target, and a (k, N, C, h, w) stack of them is fresh memory (page faults) on every batch. Where one
    batched backward pays (:func:`~introspect.engine.forward.batching_pays`: a linear head), it is taken instead.
    """
    k = scores.shape[1]
    gradient_methods = [m for m in methods if CAM_METHODS[m].uses_gradients]
    if gradient_methods and batching_pays(scores):
        grads = gradients(scores, forward.leaves)
        return {m: scaled_maps(m, forward, grads, k, sizes) for m in methods}
    raws = {m: _raw_levels(m, forward, None, k) for m in methods if m not in gradient_methods}
    per_target: dict[str, list[list[torch.Tensor]]] = {m: [] for m in gradient_methods}
    if gradient_methods:
        for grads in target_gradients(scores, forward.leaves):
            for m in gradient_methods:
                per_target[m].append(_raw_levels(m, forward, {level: g[None] for level, g in grads.items()}, 1))
    for m in gradient_methods:
        raws[m] = [torch.cat(levels) for levels in zip(*per_target[m])]
    return {m: _scaled_per_image(forward, raws[m], sizes) for m in methods}


def _raw_levels(method: str, forward: ForwardPass, grads: dict[str, torch.Tensor] | None,
                k: int) -> list[torch.Tensor]:
    """The method's raw maps at each leaf of the pass, (k, N, h, w) per level (a class-agnostic method's map
    repeated over the k targets)."""
    entry = CAM_METHODS[method]
    raws = []
    for level, activation in forward.maps().items():
        dtype = torch.float64 if activation.dtype == torch.float64 else torch.float32  # half -> float
        a = activation.to(dtype)
        g = None
        if entry.uses_gradients:
            if grads is None:
                raise StateError(f"{method} needs gradients: run the forward pass with record=True")
            g = grads[level].to(dtype)
        raw = torch.nan_to_num(entry.compute(a, g).to(device=a.device, dtype=dtype))  # (k or 1, N, h, w)
        raws.append(raw.expand(k, -1, -1, -1))
    return raws


def _scaled_per_image(forward: ForwardPass, raws: list[torch.Tensor],
                      sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Per image n, its (k, H_n, W_n) maps from the (k, N, h, w) raw maps of every level, normalised over the
    image's own pixels; the images of one size (and canvas) together."""
    groups: dict[tuple, list[int]] = {}
    for n, (height, width) in enumerate(sizes):
        canvas = None
        if forward.canvas is not None:  # the padded canvas at the image's scale
            (ph, pw), resized = forward.canvas
            rh, rw = resized[n]
            canvas = (max(height, round(ph * height / rh)), max(width, round(pw * width / rw)))
        groups.setdefault(((height, width), canvas), []).append(n)
    per_image: list[torch.Tensor | None] = [None] * len(sizes)
    for (size, canvas), images in groups.items():
        picked = torch.tensor(images, device=raws[0].device) if len(images) < raws[0].shape[1] else slice(None)
        maps = normalize_maps([raw[:, picked].transpose(0, 1) for raw in raws], size, canvas=canvas).cpu()
        for j, n in enumerate(images):  # maps: (m, k, H, W)
            per_image[n] = maps[j]
    return per_image


def _finite(tensor: torch.Tensor, what: str, notes: list[str]) -> torch.Tensor:
    if torch.isfinite(tensor).all():
        return tensor
    notes.append(f"{what} had NaN or Inf values; they were set to 0")
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)


def _maps_here(method: CamMethod, forward: ForwardPass, layer: LayerChoice, k: int, size: tuple[int, int],
               notes: list[str], raw_grads: torch.Tensor | None) -> torch.Tensor:
    activation = _finite(to_nchw(forward.activations[layer.name], layer).float(), "activations", notes)
    blank = None
    if not activation.abs().amax().item() > 0:
        blank = f"all activations are zero at {layer.name}; the maps are blank"
    grads = None
    if method.uses_gradients:
        grads = torch.stack([to_nchw(g, layer) for g in raw_grads]).float()
        grads = _finite(grads, "gradients", notes)
        if blank is None and not grads.abs().amax().item() > 0:
            blank = f"all gradients are zero at {layer.name}; the maps are blank"
    raw = method.compute(activation, grads)
    raw = _finite(raw, "the maps", notes)
    if blank is None:  # a raw map with no positive spread is blank after the ReLU and min-max (LeViT's)
        positive = torch.relu(raw).flatten(2)
        flat = int(((positive.amax(-1) - positive.amin(-1)) <= 0).sum())
        if flat:
            blank = (f"{flat} of {positive.shape[0] * positive.shape[1]} raw maps at {layer.name} are constant "
                     "(or have no positive part); those maps are blank")
    if blank is not None:
        notes.append(blank)
    return normalize_maps(raw, size).expand(k, -1, -1, -1)


def _delegated_maps(method: CamMethod, model: nn.Module, batch: torch.Tensor, layer: LayerChoice,
                    targets: list[list[Target]], logits: torch.Tensor) -> torch.Tensor:
    """Maps from pytorch-grad-cam for the methods it alone offers, every target of every image in one batch
    (the targets are pytorch-grad-cam targets: they score one image's output)."""
    import pytorch_grad_cam

    k = len(targets[0])
    n = batch.shape[0]
    repeated = batch.repeat(k, 1, 1, 1)  # item i is image i % n, explaining its target i // n
    flat = [targets[i % n][i // n] for i in range(k * n)]
    if method.retarget is not None:
        rows = logits.detach().cpu()
        flat = [method.retarget(target, rows[i % n]) for i, target in enumerate(flat)]
    target_layer = resolve_layer(model, layer.name)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return to_nchw(t, layer)

    maps = None
    with inspecting(model):
        with getattr(pytorch_grad_cam, method.delegate)(model=model, target_layers=[target_layer],
                                                         reshape_transform=reshape) as explainer:
            if hasattr(explainer, "batch_size"):
                explainer.batch_size = 64
            maps = explainer(input_tensor=repeated, targets=flat)
    if maps is None:  # pytorch-grad-cam's context manager swallows an IndexError raised inside it
        raise MethodFailedError(f"pytorch-grad-cam's {method.delegate} failed with an IndexError on this model: "
                                "pick another method")
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    return torch.from_numpy(maps).reshape(k, n, *maps.shape[-2:])


def cam_maps(
    forward: ForwardPass,
    layer: LayerChoice,
    methods: Sequence[str],
    targets: Sequence[Sequence[Target]] | torch.Tensor,
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
        targets: per image, its k targets (:class:`~introspect.engine.targets.ClassScore`, ``TrueLabel``, ...),
            or an (N, k) tensor of class indices (``ClassScore`` targets).
        size: (H, W) of the maps, normally the input's.
    Returns:
        One float32 tensor (k, N, H, W) per method, on the forward pass's device.
    """
    maps: dict[str, torch.Tensor] = {}
    names = parse_cam_methods(methods)
    targets = as_targets(targets)
    k = len(targets[0]) if targets else 0
    grads = forward.gradients(targets)[""] if needs_layer_gradient(names) else None  # one backward for all
    for name in names:
        method = CAM_METHODS[name]
        method_notes = notes.setdefault(name, []) if notes is not None else []
        if method.delegated:
            if model is None or inputs is None:
                raise ArgumentError(f"{name} is delegated to pytorch-grad-cam: it needs model= and inputs=", parameter="model")
            maps[name] = _delegated_maps(method, model, inputs, layer, targets, forward.logits)
        else:
            maps[name] = _maps_here(method, forward, layer, k, size, method_notes, grads)
    return maps


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
    from ..drawing import labelled_panels, overlay

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
                entries.append(CamMap(method=name, subject=Subject("class", index, label, prob), heatmap=heatmap,
                                      image=lambda photo=batch.photos[n], heat=heatmap: overlay(photo, heat, colormap)))
            results.append(CamResult(method=name, layer=layer.name, image_name=image_name, maps=tuple(entries),
                                     image=lambda shown=tuple(entries): labelled_panels(
                                         [e.image for e in shown], [e.subject.caption for e in shown]),
                                     warnings=tuple(notes.get(name, ()))))
        for note in notes.get(name, ()):
            warnings.warn(f"{name}: {note}", IntrospectWarning, stacklevel=2)
    return results
