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

from ..errors import ArgumentError
from ..layers import resolve_layer
from ..loaded import LoadedModel, unwrap
from ..records import KernelGrid

__all__ = ["kernel_grids", "kernel_grid", "kernel_layers", "conv_weight"]

TILE_PIXELS = 24  # each kernel tile is upscaled (nearest) to at least this many pixels


def _normalise_each(tiles: np.ndarray) -> np.ndarray:
    """Min-max each tile (first axis) to [0, 1] on its own; constant tiles become mid-grey."""
    flat = tiles.reshape(tiles.shape[0], -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0.5)
    return scaled.reshape(tiles.shape).astype(np.float32)


FILTERS_PER_BAND = 16  # a 3-d conv's filters per band of its time x filter grid


def _time_by_filter(filters: np.ndarray) -> np.ndarray:
    """A 3-d conv's colour kernels ``(F, T, kh, kw, 3)`` as bands of :data:`FILTERS_PER_BAND` filters, each band
    a row per time step (labelled ``t=0``...) and a column per filter, titled with its filters' indices."""
    from ..drawing import grid_with_row_labels

    count, steps = filters.shape[:2]
    k = max(1, -(-TILE_PIXELS // max(filters.shape[2:4])))
    tiles = _normalise_each(filters.reshape(-1, *filters.shape[2:])).reshape(filters.shape)
    tiles = np.repeat(np.repeat(tiles, k, axis=2), k, axis=3)
    bands = []
    for start in range(0, count, FILTERS_PER_BAND):
        band = tiles[start:start + FILTERS_PER_BAND].transpose(1, 0, 2, 3, 4)  # (T, f, h, w, 3)
        if band.shape[1] < FILTERS_PER_BAND and start:  # the last band as wide as the others
            fill = np.ones((steps, FILTERS_PER_BAND - band.shape[1], *band.shape[2:]), dtype=band.dtype)
            band = np.concatenate([band, fill], axis=1)
        last = min(start + FILTERS_PER_BAND, count) - 1
        bands.append(grid_with_row_labels(band, [f"t={t}" for t in range(steps)], f"filters {start}-{last}"))
    return np.concatenate(bands, axis=0)


def conv_weight(module: nn.Module) -> torch.Tensor | None:
    """The float weight of a 2-d or 3-d convolution: ``nn.Conv2d``/``nn.Conv3d``, or a quantized conv
    (its int8 weight dequantized); None for any other module."""
    from ..tasks.quantized import quantized_weight

    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        return module.weight.detach()
    weight = quantized_weight(module)
    if weight is not None and weight.ndim in (4, 5):
        return weight
    return None


def kernel_layers(model: nn.Module) -> list[str]:
    """Names of every 2-d and 3-d convolution, int8 quantized ones included."""
    return [name for name, m in model.named_modules() if name and conv_weight(m) is not None]


def kernel_grid(name: str, conv: nn.Module, max_filters: int = 64, max_channels: int = 16) -> KernelGrid:
    """One conv layer's weights as a grid image (a 3-d conv: a column per time step of each kernel).

    Args:
        name: the layer's name.
        conv: the layer.
        max_filters: most filters shown.
        max_channels: most input channels shown per filter.

    Returns:
        A :class:`~introspect.records.KernelGrid`.
    """
    from ..drawing import tile_grid

    tensor = conv_weight(conv)
    if tensor is None:
        raise ArgumentError(f"conv={name} ({type(conv).__name__}) is not a convolution", parameter="conv")
    full_shape = tuple(tensor.shape)
    weight = np.nan_to_num(tensor.float().cpu().numpy())
    groups = getattr(conv, "groups", 1)
    if weight.ndim == 5:  # (O, I, T, kh, kw)
        if weight.shape[1] == 3 and groups == 1:  # colour tiles: a row per time step, a column per filter
            filters = weight[:max_filters].transpose(0, 2, 3, 4, 1)  # (F, T, kh, kw, 3)
            return KernelGrid(name, full_shape, "rgb-time", filters.shape[0], 3, _time_by_filter(filters))
        weight = weight.reshape(weight.shape[0], -1, *weight.shape[3:])  # each (channel, time step) slice a tile
    out_ch, in_ch = weight.shape[:2]
    if in_ch == 3 and groups == 1:
        filters = weight[:max_filters].transpose(0, 2, 3, 1)  # (F, kh, kw, 3)
        image = tile_grid(_normalise_each(filters), padding=1, scale_to=TILE_PIXELS)
        return KernelGrid(name, full_shape, "rgb", filters.shape[0], 3, image)
    if weight.shape[2:] == (1, 1) and in_ch > 1:
        # Pointwise: a 1x1 kernel normalised on its own is a flat grey pixel, so show the layer as
        # one (filters x channels) matrix normalised over the layer instead.
        matrix = weight[:max_filters, :max_channels, 0, 0]
        image = tile_grid(_normalise_each(matrix[None]), padding=0, scale_to=8 * max(matrix.shape))
        return KernelGrid(name, full_shape, "pointwise", matrix.shape[0], matrix.shape[1], image)
    if in_ch == 1:
        tiles = weight[: max_filters * max_channels, 0]
        image = tile_grid(_normalise_each(tiles), padding=1, scale_to=TILE_PIXELS)
        return KernelGrid(name, full_shape, "depthwise", tiles.shape[0], 1, image)
    shown_filters, shown_channels = min(out_ch, max_filters), min(in_ch, max_channels)
    tiles = weight[:shown_filters, :shown_channels].reshape(-1, *weight.shape[2:])
    image = tile_grid(_normalise_each(tiles), ncols=shown_channels, padding=1, scale_to=TILE_PIXELS)
    return KernelGrid(name, full_shape, "channels", shown_filters, shown_channels, image)


def kernel_grids(model: nn.Module | LoadedModel, layers: Sequence[str] | None = None, max_filters: int = 64,
                 max_channels: int = 16) -> list[KernelGrid]:
    """Grids of every 2-d and 3-d conv, int8 ones dequantized (or of the named conv layers).

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
    names = list(layers) if layers else kernel_layers(module)
    grids = []
    with torch.no_grad():
        for name in names:
            conv = resolve_layer(module, name)
            if conv_weight(conv) is not None:
                grids.append(kernel_grid(name, conv, max_filters, max_channels))
    return grids
