"""Kernel grids: tile layout, per-kernel normalisation, caps, depthwise and pointwise convs."""

from __future__ import annotations

import numpy as np
import torch
from conftest import assert_untouched, model_state
from torch import nn

from introspect import kernel_grids
from introspect.analyzers.kernels import TILE_PIXELS, kernel_grid


def conv_with(weight: torch.Tensor, groups: int = 1) -> nn.Conv2d:
    out_ch, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_ch, (kh, kw), groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def test_first_conv_is_one_rgb_tile_per_filter_each_normalised_on_its_own() -> None:
    weight = torch.randn(4, 3, 3, 3)
    weight[1] *= 100  # a big kernel must not wash out the others
    grid = kernel_grid("conv1", conv_with(weight))
    assert (grid.mode, grid.shown_filters, grid.shown_channels) == ("rgb", 4, 3)
    scale = -(-TILE_PIXELS // 3)  # tiles are upscaled by a whole factor to at least TILE_PIXELS
    side = 3 * scale
    assert grid.image.shape == (2 * (side + 1) + 1, 2 * (side + 1) + 1, 3)
    for index in range(4):
        row, col = divmod(index, 2)
        tile = grid.image[1 + row * (side + 1):1 + row * (side + 1) + side,
                          1 + col * (side + 1):1 + col * (side + 1) + side]
        assert tile.min() == 0 and tile.max() == 255  # min-max per kernel
        expected = weight[index].permute(1, 2, 0).numpy()
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        assert np.abs(tile[::scale, ::scale] / 255.0 - expected).max() <= 1 / 255 + 1e-6


def test_deeper_conv_is_a_grey_tile_per_filter_and_channel_capped() -> None:
    grid = kernel_grid("layer", conv_with(torch.randn(100, 40, 3, 3)), max_filters=64, max_channels=16)
    assert (grid.mode, grid.shown_filters, grid.shown_channels) == ("channels", 64, 16)
    scale = -(-TILE_PIXELS // 3)
    assert grid.image.shape[:2] == (64 * (3 * scale + 1) + 1, 16 * (3 * scale + 1) + 1)
    assert (grid.image[..., 0] == grid.image[..., 1]).all()  # grey


def test_depthwise_conv_is_one_tile_per_channel() -> None:
    grid = kernel_grid("dw", conv_with(torch.randn(32, 1, 3, 3), groups=32))
    assert (grid.mode, grid.shown_filters, grid.shown_channels) == ("depthwise", 32, 1)


def test_pointwise_conv_is_one_matrix_normalised_over_the_layer() -> None:
    weight = torch.randn(20, 10, 1, 1)
    grid = kernel_grid("pw", conv_with(weight))
    assert (grid.mode, grid.shown_filters, grid.shown_channels) == ("pointwise", 20, 10)
    matrix = grid.image[::8, ::8, 0].astype(np.float64) / 255.0
    assert matrix.shape == (20, 10)
    values = weight[:, :, 0, 0].numpy()
    expected = (values - values.min()) / (values.max() - values.min())
    assert np.abs(matrix - expected).max() <= 1 / 255 + 1e-6
    assert len(np.unique(grid.image)) > 20  # not the flat grey of 1x1 kernels normalised one by one


def test_kernel_grids_covers_every_conv_and_leaves_the_model_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1))
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = model_state(model)
    grids = kernel_grids(model)
    assert_untouched(before, model)
    assert [(g.layer, g.mode) for g in grids] == [("0", "rgb"), ("2", "depthwise"), ("3", "pointwise")]
    assert [g.layer for g in kernel_grids(model, layers=["3"])] == ["3"]
