"""Bilinear resizes as matrix products: the resize ``F.interpolate(..., mode="bilinear", align_corners=False)``
does, axis by axis, written as the (size, source) matrix of each axis.

A 2-d bilinear resize is separable: ``resized = A_h @ x @ A_w.T``. As matrices, a resize of a few small maps to
a large size is two small products (much faster on a CPU than ``upsample_bilinear2d``), and its adjoint
(``A_h.T @ y @ A_w``) is as cheap: a score that is linear in a resized map can be taken on the map before the
resize. :func:`bilinear_matrix` takes the weights from ``F.interpolate`` itself, so that they are the resize's own.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["bilinear_matrix", "bilinear_resize", "bilinear_resize_sum"]


@functools.lru_cache(maxsize=64)
def bilinear_matrix(source: int, size: int, dtype: torch.dtype = torch.float32,
                    device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """(size, source): the bilinear resize (``align_corners=False``) of an axis of length ``source`` to ``size``,
    taken from ``F.interpolate`` itself (each row holds at most two non-zero weights, summing to 1)."""
    eye = torch.eye(source, dtype=dtype, device=device)[:, None, :, None]  # image j: the j-th unit vector
    return F.interpolate(eye, size=(size, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T.contiguous()


def bilinear_resize(maps: torch.Tensor, size: tuple[int, int], *, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """``(..., h, w)`` maps resized bilinearly to ``size`` (``align_corners=False``, as ``F.interpolate``), as two
    matrix products; ``crop``: keep only the top-left ``crop`` of the resized maps (without computing the rest)."""
    return bilinear_resize_sum([maps], size, crop=crop)


def bilinear_resize_sum(levels: list[torch.Tensor], size: tuple[int, int], *,
                        crop: tuple[int, int] | None = None) -> torch.Tensor:
    """The sum of :func:`bilinear_resize` of each ``(..., h_l, w_l)`` level (the same M maps at several resolutions,
    an FPN's) to ``size``, as one product: ``sum_l A_h^l x_l A_w^l.T = [A_h^1 ... A_h^L] @ [x_l A_w^l.T]_l``,
    stacked along the rows. Only one ``(M, *size)`` tensor is made, however many levels there are."""
    height, width = crop if crop is not None else size
    dtype, device = levels[0].dtype, levels[0].device
    rows, columns = [], []
    for level in levels:
        columns.append(level.to(dtype) @ bilinear_matrix(level.shape[-1], int(size[1]), dtype, device)[:width].T)
        rows.append(bilinear_matrix(level.shape[-2], int(size[0]), dtype, device)[:height])
    if len(levels) == 1:
        return rows[0] @ columns[0]
    return torch.cat(rows, dim=1) @ torch.cat(columns, dim=-2)
