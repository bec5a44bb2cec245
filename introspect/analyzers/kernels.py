"""Kernels: conv weights drawn as grids of tiles, each kernel normalised on its own.

A first conv with 3 input channels gives one colour tile per filter. Deeper convs
give one grey tile per (filter, input channel), filters as rows, capped at
``max_filters`` x ``max_channels`` so a grid stays readable. A depthwise conv
(one input channel per filter) gives one grey tile per channel. A pointwise (1x1)
conv gives one (filters x channels) matrix normalised over the layer, since a
single weight normalised on its own carries nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..layers import conv_layers, resolve_layer
from ..models import LoadedModel, unwrap
from ..records import KernelGrid

__all__ = ["kernel_grids", "kernel_grid"]

TILE_PIXELS = 24  # each kernel tile is upscaled (nearest) to at least this many pixels


def _normalise_each(tiles: np.ndarray) -> np.ndarray:
    """Min-max each tile (first axis) to [0, 1] on its own; constant tiles become mid-grey."""
    flat = tiles.reshape(tiles.shape[0], -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0.5)
    return scaled.reshape(tiles.shape).astype(np.float32)


def kernel_grid(name: str, conv: nn.Conv2d, max_filters: int = 64, max_channels: int = 16) -> KernelGrid:
    """One conv layer's weights as a grid image.

    Args:
        name: the layer's name.
        conv: the layer.
        max_filters: most filters shown.
        max_channels: most input channels shown per filter.

    Returns:
        A :class:`~introspect.records.KernelGrid`.
    """
    from ..drawing import tile_grid

    weight = conv.weight.detach().float().cpu().numpy()
    out_ch, in_ch = weight.shape[:2]
    weight = np.nan_to_num(weight)
    if in_ch == 3 and conv.groups == 1:
        filters = weight[:max_filters].transpose(0, 2, 3, 1)  # (F, kh, kw, 3)
        image = tile_grid(_normalise_each(filters), padding=1, scale_to=TILE_PIXELS)
        return KernelGrid(name, tuple(conv.weight.shape), "rgb", filters.shape[0], 3, image)
    if weight.shape[2:] == (1, 1) and in_ch > 1:
        # Pointwise: a 1x1 kernel normalised on its own is a flat grey pixel, so show the layer as
        # one (filters x channels) matrix normalised over the layer instead.
        matrix = weight[:max_filters, :max_channels, 0, 0]
        image = tile_grid(_normalise_each(matrix[None]), padding=0, scale_to=8 * max(matrix.shape))
        return KernelGrid(name, tuple(conv.weight.shape), "pointwise", matrix.shape[0], matrix.shape[1], image)
    if in_ch == 1:
        tiles = weight[: max_filters * max_channels, 0]
        image = tile_grid(_normalise_each(tiles), padding=1, scale_to=TILE_PIXELS)
        return KernelGrid(name, tuple(conv.weight.shape), "depthwise", tiles.shape[0], 1, image)
    shown_filters, shown_channels = min(out_ch, max_filters), min(in_ch, max_channels)
    tiles = weight[:shown_filters, :shown_channels].reshape(-1, *weight.shape[2:])
    image = tile_grid(_normalise_each(tiles), ncols=shown_channels, padding=1, scale_to=TILE_PIXELS)
    return KernelGrid(name, tuple(conv.weight.shape), "channels", shown_filters, shown_channels, image)


def kernel_grids(model: nn.Module | LoadedModel, layers: Sequence[str] | None = None, max_filters: int = 64,
                 max_channels: int = 16) -> list[KernelGrid]:
    """Grids of every Conv2d (or of the named conv layers).

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        layers: layer names (default: every Conv2d); other layer types are skipped.
        max_filters: most filters shown per layer.
        max_channels: most input channels shown per filter.

    Returns:
        One :class:`~introspect.records.KernelGrid` per conv layer.

    Raises:
        UnknownLayerError: a name that is not a layer of the model.
    """
    module, _ = unwrap(model)
    names = list(layers) if layers else conv_layers(module)
    grids = []
    with torch.no_grad():
        for name in names:
            conv = resolve_layer(module, name)
            if isinstance(conv, nn.Conv2d):
                grids.append(kernel_grid(name, conv, max_filters, max_channels))
    return grids
