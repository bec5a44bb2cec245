"""Feature maps: activations of chosen layers, top channels by mean activation, and stats."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .forward import ForwardPass
from ..inputs import InputBatch
from ..layers import LayerChoice, default_feature_layers, layer_choice, to_nchw
from ..options import FeatureOptions
from ..records import FeatureMap

__all__ = ["feature_maps_from_pass", "feature_layer_choices", "feature_map"]


def feature_layer_choices(model: nn.Module, layers: Sequence[str] | None = None, *,
                          input_size: int | Sequence[int] | None = None) -> list[LayerChoice]:
    """The layers asked for (checked, with their probed layout), or the model's default stage outputs.

    Args:
        model: the module.
        layers: layer names, or None for the defaults.
        input_size: the input's side or (H, W) (default: the size the model declares, else 224).

    Returns:
        One layer choice per layer.

    Raises:
        UnknownLayerError: a name that is not a layer of the model.
    """
    if not layers:
        return default_feature_layers(model, input_size=input_size)
    return [layer_choice(model, name, input_size=input_size) for name in layers]


def feature_map(choice: LayerChoice, image_name: str, activation: torch.Tensor, max_channels: int = 64) -> FeatureMap:
    """One layer's output for one input, (C, H, W) (or tokens / channels-last as ``choice`` says), as a record."""
    from ..drawing import normalize01, tile_grid

    maps = to_nchw(activation[None], choice)[0].float()  # (C, H, W)
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    means = maps.mean(dim=(1, 2))
    order = torch.argsort(means, descending=True)[:max_channels]
    tiles = np.stack([normalize01(maps[c].cpu().numpy()) for c in order.tolist()])
    scale = 48 if maps.shape[-1] < 48 else None
    return FeatureMap(
        layer=choice.name,
        image_name=image_name,
        shape=tuple(activation.shape),
        channels=tuple(int(c) for c in order),
        channel_means=tuple(float(means[c]) for c in order),
        mean=float(maps.mean()),
        std=float(maps.std()) if maps.numel() > 1 else 0.0,
        zero_fraction=float((maps == 0).float().mean()),
        image=tile_grid(tiles, padding=2, scale_to=scale),
    )


def feature_maps_from_pass(forward: ForwardPass, batch: InputBatch, choices: Sequence[LayerChoice],
                           max_channels: int = FeatureOptions.max_channels) -> list[FeatureMap]:
    """Feature maps of every image and chosen layer from a forward pass that captured them.

    Args:
        forward: the shared forward pass over ``batch``.
        batch: the images.
        choices: the layers (captured by ``forward``).
        max_channels: most channels drawn per map (the most active first).

    Returns:
        One :class:`~introspect.records.FeatureMap` per image and layer, images outer.
    """
    return [
        feature_map(choice, name, forward.activations[choice.name][n], max_channels)
        for n, name in enumerate(batch.names)
        for choice in choices
    ]
