"""Feature visualisation: synthesise the input that excites a filter most (activation maximisation).

As Lucent (and Olah et al. 2017) do: the image is parametrised in a decorrelated
Fourier basis (1/f scaled spectrum, decorrelated colours, sigmoid to [0, 1]), and at
each step it is padded, jittered and randomly rescaled before it goes through the
model, so the optimiser finds patterns rather than adversarial pixel noise. All the
filters of one layer are optimised together, one image per filter, in one batch;
the forward pass stops at the layer (the rest of the model never runs). Gradients
are taken with ``torch.autograd.grad`` with respect to the image parameters only:
the model's parameters never get a ``.grad``. Runs are bounded by ``steps`` and by a
wall-clock ``budget_s``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError, LayerError
from ..hooks import first_tensor, inspecting
from ..layers import LayerChoice, default_feature_layers, layer_choice, resolve_layer, to_nchw
from ..loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, device_and_dtype, unwrap
from ..records import FilterGrid
from ..options import FilterOptions

__all__ = ["visualize_filters", "default_filter_layers"]

# Lucent's colour decorrelation: square root of ImageNet's colour covariance, normalised.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class _ReachedLayer(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def default_filter_layers(model: nn.Module, count: int = 3) -> list[LayerChoice]:
    """Layers evenly spread over the model's default feature layers (the first, middle and last for 3).

    Args:
        model: the module.
        count: how many layers.

    Returns:
        At most ``count`` layer choices, in model order.
    """
    choices = default_feature_layers(model)
    if len(choices) <= count:
        return choices
    picks = sorted({round(i * (len(choices) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [
        len(choices) - 1]
    return [choices[i] for i in picks]


def _layer_choices(model: nn.Module, layers: Sequence[str] | None) -> list[LayerChoice]:
    if not layers:
        return default_filter_layers(model)
    return [layer_choice(model, name) for name in layers]


def _frequency_scale(size: int, decay_power: float = 1.0) -> torch.Tensor:
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay_power  # (size, size // 2 + 1)


def _to_rgb(spectrum: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """Image parameters -> (N, 3, size, size) RGB in [0, 1]."""
    image = torch.fft.irfftn(torch.view_as_complex(spectrum) * scale, s=(size, size), norm="ortho") / 4.0
    colour = _COLOR_SQRT.to(image.device, image.dtype)
    image = torch.einsum("nchw,dc->ndhw", image, colour)
    return torch.sigmoid(image)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad, jitter by up to 8 px, rescale by 0.9-1.1, jitter again by up to 4 px (Lucent's recipe, no rotation)."""
    size = images.shape[-1]

    def jitter(x: torch.Tensor, d: int) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(0, d + 1, (2,), generator=generator))
        return x[..., dy:x.shape[-2] - (d - dy), dx:x.shape[-1] - (d - dx)]

    x = F.pad(images, (12, 12, 12, 12), mode="constant", value=0.5)
    x = jitter(x, 8)
    factor = 0.9 + 0.02 * int(torch.randint(0, 11, (1,), generator=generator))
    x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    x = jitter(x, 4)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class _Adam:
    """Adam on one tensor, fed the gradient directly (torch.optim would import torch._dynamo: seconds)."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))


def _redirected_relus(scope, model: nn.Module, active: dict[str, bool]) -> None:
    """Early on, let a ReLU pass back gradients that would raise its input even where it is off.

    Lucid's "redirected ReLU": without it a filter that is zero on the starting image
    gets no gradient at all and stays blank. In-place ReLUs are made out-of-place for
    the scope's lifetime (full backward hooks cannot wrap in-place ops).
    """

    def redirect(module: nn.Module, grad_input: tuple, grad_output: tuple):
        if not active["on"] or grad_input[0] is None:
            return None
        upward = grad_output[0] < 0  # a loss gradient < 0 asks for a larger input
        return (torch.where(upward, grad_output[0], grad_input[0]),)

    for module in model.modules():
        if isinstance(module, nn.ReLU):
            if module.inplace:
                scope.set_attribute(module, "inplace", False)
            scope.full_backward_hook(module, redirect)


def _pick_filters(filters: int | Sequence[int], channels: int, layer: str) -> list[int]:
    if isinstance(filters, int):
        if filters < 1:
            raise ArgumentError(f"filters={filters} must be at least 1", parameter="filters")
        return list(range(min(filters, channels)))
    chosen = [int(f) for f in filters]
    bad = [f for f in chosen if not 0 <= f < channels]
    if bad or not chosen:
        raise ArgumentError(f"filters={bad or '[]'} are not in layer {layer} (it has channels 0 to {channels - 1})",
                            parameter="filters")
    return chosen


def _run_to_layer(model: nn.Module, module: nn.Module, choice: LayerChoice, inputs: torch.Tensor,
                  redirect: bool = False) -> torch.Tensor:
    """The layer's output as (N, C, H, W), running the model only as far as that layer.

    With ``redirect``, a target layer that is itself a ReLU passes gradients straight
    through where it is off (the redirected-ReLU trick for the layer the hooks miss).
    """
    captured: dict[str, torch.Tensor] = {}

    def stop(mod: nn.Module, args: tuple, output: object) -> None:
        out = first_tensor(output)
        if redirect and isinstance(mod, nn.ReLU) and args and isinstance(args[0], torch.Tensor) \
                and args[0].shape == out.shape:
            x = args[0]
            out = out + (x - x.detach()) * (out <= 0)
        captured["out"] = out
        raise _ReachedLayer

    handle = module.register_forward_hook(stop)  # removed below; the caller's scope also covers the model
    try:
        model(inputs)
    except _ReachedLayer:
        pass
    finally:
        handle.remove()
    if "out" not in captured:
        raise LayerError(f"layers={[choice.name]!r}: layer {choice.name!r} did not run in the forward pass, pick "
                         "another", parameter="layers")
    return to_nchw(captured["out"], choice)


def _mean_activation(maps: torch.Tensor, filters: Sequence[int]) -> torch.Tensor:
    """Mean of channel filters[i] over space in image i: (N,)."""
    index = torch.as_tensor(list(filters), device=maps.device)
    picked = maps[torch.arange(len(filters), device=maps.device), index]
    return picked.float().mean(dim=(-2, -1))


def _grid(tiles: np.ndarray, filters: Sequence[int]) -> np.ndarray:
    from ..drawing import label_image, tile_grid

    labelled = np.stack([label_image(tile, f"filter {f}") for tile, f in zip(tiles, filters)])
    return tile_grid(labelled, ncols=math.ceil(math.sqrt(len(filters))), padding=4)


def visualize_filters(
    model: nn.Module | LoadedModel,
    layers: Sequence[str] | None = None,
    filters: int | Sequence[int] = FilterOptions.count,
    steps: int = FilterOptions.steps,
    size: int | None = FilterOptions.size,
    budget_s: float | None = FilterOptions.budget_s,
    lr: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> list[FilterGrid]:
    """Activation maximisation for ``filters`` of each layer (default: first 8 of three stage outputs).

    ``size`` is the side of the synthesised images (default 96, or the model's fixed
    input size); ``budget_s`` bounds the wall-clock time of all layers together, shared
    evenly. Example: ``introspect.visualize_filters(loaded, ["layer3"], steps=32)[0].to_pil()``.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        layers: layer names (default: three stage outputs).
        filters: how many filters per layer (the first ones), or their indices.
        steps: optimisation steps per layer.
        size: side of the synthesised images (default 96, or the model's fixed input size).
        budget_s: wall-clock seconds for all layers together (None: no limit).
        lr: Adam's learning rate.
        seed: seed of the starting noise and the augmentations.
        progress: show a progress bar on stderr.

    Returns:
        One :class:`~introspect.records.FilterGrid` per layer.

    Raises:
        ArgumentError: ``steps`` below 1, or ``filters`` not in the layer.
        UnknownLayerError: a name that is not a layer of the model.
        LayerError: a layer that does not run in the forward pass.
    """
    from tqdm import tqdm

    from ..tasks.base import NEEDS
    from .batch import require

    module, loaded = unwrap(model)
    if loaded is not None:
        require(loaded, "filters", NEEDS["filters"])
    if steps < 1:
        raise ArgumentError(f"steps={steps} must be at least 1", parameter="steps")
    choices = _layer_choices(module, layers)
    fixed = getattr(module, "image_size", None)
    side = int(size or (fixed if isinstance(fixed, int) else 96))
    transform = loaded.transform if loaded is not None else None
    mean = torch.tensor(getattr(transform, "mean", IMAGENET_MEAN)).reshape(1, 3, 1, 1)
    std = torch.tensor(getattr(transform, "std", IMAGENET_STD)).reshape(1, 3, 1, 1)
    device, dtype = device_and_dtype(module)
    mean, std = mean.to(device, dtype), std.to(device, dtype)
    scale = _frequency_scale(side).to(device, dtype)[None, None]
    started = time.perf_counter()
    results: list[FilterGrid] = []
    bar = tqdm(total=steps * len(choices), desc="filters", unit="step", file=sys.stderr,
               disable=None if progress else True, leave=False)
    try:
        with inspecting(module) as scope:
            redirecting = {"on": False}
            _redirected_relus(scope, module, redirecting)
            for position, choice in enumerate(choices):
                target = resolve_layer(module, choice.name)
                generator = torch.Generator().manual_seed(seed)
                with torch.inference_mode():
                    probe = _run_to_layer(module, target, choice, torch.zeros(1, 3, side, side, device=device,
                                                                                   dtype=dtype))
                picked = _pick_filters(filters, probe.shape[1], choice.name)
                spectrum = (torch.randn(len(picked), 3, side, side // 2 + 1, 2, generator=generator) * 0.01).to(
                    device, dtype).requires_grad_(True)
                optimizer = _Adam(spectrum, lr)

                def activation_now() -> torch.Tensor:
                    with torch.inference_mode():
                        rgb = _to_rgb(spectrum.detach(), scale, side)
                        return _mean_activation(_run_to_layer(module, target, choice, (rgb - mean) / std), picked)

                start = activation_now()
                remaining = None if budget_s is None else budget_s - (time.perf_counter() - started)
                deadline = None if remaining is None else time.perf_counter() + max(0.0, remaining) / (
                    len(choices) - position)
                done = 0
                stopped = False
                for _ in range(steps):
                    if deadline is not None and done > 0 and time.perf_counter() >= deadline:
                        stopped = True
                        break
                    redirecting["on"] = done < max(16, steps // 4)
                    with torch.enable_grad():
                        rgb = _augment(_to_rgb(spectrum, scale, side), generator)
                        maps = _run_to_layer(module, target, choice, (rgb - mean) / std, redirecting["on"])
                        loss = -_mean_activation(maps, picked).sum()
                        (grad,) = torch.autograd.grad(loss, [spectrum])
                    optimizer.step(grad)
                    done += 1
                    bar.update(1)
                if stopped:
                    bar.update(steps - done)
                final = activation_now()
                with torch.inference_mode():
                    rgb = _to_rgb(spectrum.detach(), scale, side)
                tiles = (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                results.append(FilterGrid(
                    layer=choice.name, filters=tuple(picked), size=side, steps=done, stopped_early=stopped,
                    start_activation=tuple(float(v) for v in start.cpu()),
                    final_activation=tuple(float(v) for v in final.cpu()),
                    tiles=tiles, image=_grid(tiles, picked),
                ))
    finally:
        bar.close()
    return results
