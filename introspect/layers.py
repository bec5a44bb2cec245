"""Layer names: resolve them, list them, and pick default layers per model family.

This is the one place that knows which layer to look at: the stage outputs shown as
feature maps, and the CAM target layer with the reshape that turns its output into
a (N, C, H, W) map (tokens for ViT, channels-last for Swin).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnknownLayerError

__all__ = [
    "LayerChoice",
    "layer_names",
    "resolve_layer",
    "resolve_layers",
    "default_feature_layers",
    "cam_target_layer",
    "to_nchw",
    "conv_layers",
]

Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerChoice:
    """A layer by name, and how to turn its output into a (N, C, H, W) map."""

    name: str
    channels_last: bool = False


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule, in registration order (the names ``--layers`` takes)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name lists the closest valid ones."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"valid names start with: {', '.join(names[:8])}, ..."
    raise UnknownLayerError(
        f"unknown layer {name!r} ({hint}); list every layer with `python -m introspect MODEL --list-layers`"
    )


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Resolve several names at once (the first unknown one raises)."""
    return [resolve_layer(model, name) for name in names]


def conv_layers(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in the model."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _family(model: nn.Module) -> str:
    """The model's class name, or that of its nearest torchvision base (a ResNet subclass is a ResNet)."""
    for cls in type(model).__mro__:  # a quantizable subclass counts as its float family
        if cls.__module__.startswith("torchvision.models") and ".quantization." not in cls.__module__:
            return cls.__name__
    return type(model).__name__


def _evenly(names: Sequence[str], count: int) -> list[str]:
    if len(names) <= count:
        return list(names)
    step = len(names) / count
    return [names[min(len(names) - 1, round((i + 1) * step) - 1)] for i in range(count)]


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return True
        quantized_conv = type(m).__module__.startswith("torch.ao.nn") and isinstance(getattr(m, "stride", None), tuple)
        if (isinstance(m, nn.Conv2d) or quantized_conv) and max(m.stride) > 1:
            return True
    return False


_HEAD_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten, nn.Dropout)


def _stage_ends(prefix: str, container: nn.Module, limit: int = 6) -> list[str]:
    """Children of ``container`` that end a resolution stage (the child before a downsampling one)."""
    children = []
    for name, child in container.named_children():
        if isinstance(child, _HEAD_TYPES) or "aux" in name.lower() or name in {"classifier", "fc", "head", "heads"}:
            break
        children.append((f"{prefix}{name}", child))
    ends = [children[i][0] for i in range(len(children) - 1) if _downsamples(children[i + 1][1])]
    if children:
        ends.append(children[-1][0])
    return _evenly(ends, limit)


_FEATURES_TRUNK = {"MobileNetV2", "MobileNetV3", "EfficientNet", "ConvNeXt", "SqueezeNet", "MNASNet"}


def _last_child_name(container: nn.Module) -> str:
    return list(container.named_children())[-1][0]


def _largest_child(model: nn.Module) -> tuple[str, nn.Module] | None:
    total = sum(p.numel() for p in model.parameters()) or 1
    best = max(
        ((n, c) for n, c in model.named_children() if isinstance(c, (nn.Sequential, nn.ModuleList))),
        key=lambda nc: sum(p.numel() for p in nc[1].parameters()),
        default=None,
    )
    if best is not None and sum(p.numel() for p in best[1].parameters()) > 0.5 * total:
        return best
    return None


def default_feature_layers(model: nn.Module) -> list[LayerChoice]:
    """Four to six layers that end the model's stages, per torchvision family (generic otherwise)."""
    family = _family(model)
    names = set(layer_names(model))
    if family == "ResNet":
        chosen = ["relu", "layer1", "layer2", "layer3", "layer4"]
    elif family in {"VGG", "AlexNet"}:
        chosen = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    elif family == "DenseNet":
        chosen = ["features.pool0", "features.denseblock1", "features.denseblock2", "features.denseblock3",
                  "features.norm5"]
    elif family == "RegNet":
        chosen = ["stem"] + [f"trunk_output.{n}" for n, _ in model.trunk_output.named_children()]
    elif family == "ShuffleNetV2":
        chosen = ["maxpool", "stage2", "stage3", "stage4", "conv5"]
    elif family == "GoogLeNet":
        chosen = ["maxpool1", "maxpool2", "inception3b", "inception4e", "inception5b"]
    elif family == "Inception3":
        chosen = ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]
    elif family == "VisionTransformer":
        blocks = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
        chosen = _evenly(blocks, 4)
    elif family == "SwinTransformer":
        chosen = [f"features.{i}" for i in range(1, len(model.features), 2)]
        return [LayerChoice(n, channels_last=True) for n in chosen if n in names]
    elif family == "MaxVit":
        chosen = ["stem"] + [f"blocks.{n}" for n, _ in model.blocks.named_children()]
    elif family in _FEATURES_TRUNK:
        trunk = "layers" if family == "MNASNet" else "features"
        chosen = _stage_ends(f"{trunk}.", getattr(model, trunk))
    else:
        inner = _largest_child(model)
        chosen = _stage_ends(f"{inner[0]}.", inner[1]) if inner else _stage_ends("", model)
    return [LayerChoice(n) for n in chosen if n in names]


def cam_target_layer(model: nn.Module) -> LayerChoice:
    """The CAM target layer: the last conv stage for CNNs, the last block's norm for transformers."""
    family = _family(model)
    table = {
        "ResNet": "layer4",
        "RegNet": "trunk_output",
        "ShuffleNetV2": "conv5",
        "GoogLeNet": "inception5b",
        "Inception3": "Mixed_7c",
        "MNASNet": "layers",
    }
    if family in table:
        return LayerChoice(table[family])
    if family == "MaxVit":
        return LayerChoice(f"blocks.{_last_child_name(model.blocks)}")
    if family in {"VGG", "AlexNet", "DenseNet"} | (_FEATURES_TRUNK - {"MNASNet"}):
        return LayerChoice(f"features.{_last_child_name(model.features)}")
    if family == "VisionTransformer":
        return LayerChoice(f"encoder.layers.{_last_child_name(model.encoder.layers)}.ln_1")
    if family == "SwinTransformer":
        return LayerChoice("norm", channels_last=True)
    # Any other module: the last top-level child (not an auxiliary head) that holds a Conv2d.
    candidates = [
        name for name, child in model.named_children()
        if "aux" not in name.lower() and any(isinstance(m, nn.Conv2d) for m in child.modules())
    ]
    if candidates:
        return LayerChoice(candidates[-1])
    convs = conv_layers(model)
    if convs:
        return LayerChoice(convs[-1])
    raise UnknownLayerError(
        f"cannot pick a CAM target layer for {family} (it has no Conv2d); pass one with --cam-layer NAME"
    )


def to_nchw(activation: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """A layer output as a (N, C, H, W) map: tokens (N, T, C) become a grid, dropping a class token."""
    if activation.ndim == 4:
        return activation.permute(0, 3, 1, 2) if channels_last else activation
    if activation.ndim == 3:
        n, tokens, channels = activation.shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            side = math.isqrt(tokens - 1)
            if side * side != tokens - 1:
                raise ValueError(f"cannot arrange {tokens} tokens as a square grid")
            activation = activation[:, 1:, :]
        return activation.reshape(n, side, side, channels).permute(0, 3, 1, 2)
    if activation.ndim == 2:
        return activation[:, :, None, None]
    raise ValueError(f"cannot show an activation of shape {tuple(activation.shape)} as a map")
