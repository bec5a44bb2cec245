"""Pixel geometry shared by records, analyzers and the synthetic task: which points lie in which boxes."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ArgumentError

__all__ = ["points_in_boxes"]


def _array(values: Any, dtype: type) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on an accelerator
        values = values.detach().cpu()
    return np.asarray(values, dtype=dtype)


def points_in_boxes(peaks_yx: Any, boxes: Any, margin: int = 0) -> np.ndarray:
    """Whether each ``(row, column)`` point lies in its ``(x0, y0, x1, y1)`` box, upper bounds exclusive.

    Args:
        peaks_yx: ``(N, 2)`` points as (row, column), numbers, an array or a tensor.
        boxes: ``(N, 4)`` boxes as (x0, y0, x1, y1), one per point, an array or a tensor.
        margin: pixels by which every box is grown on each side.

    Returns:
        Bool array of shape ``(N,)``.

    Raises:
        ArgumentError: ``peaks_yx`` and ``boxes`` hold different numbers of entries.
    """
    peaks = _array(peaks_yx, np.float64).reshape(-1, 2)
    b = _array(boxes, np.float64).reshape(-1, 4)
    if len(peaks) != len(b):
        raise ArgumentError(f"peaks_yx has {len(peaks)} points but boxes has {len(b)} boxes: give one box per point",
                            parameter="boxes")
    rows, cols = peaks[:, 0], peaks[:, 1]
    x0, y0, x1, y1 = b.T
    return (cols >= x0 - margin) & (cols < x1 + margin) & (rows >= y0 - margin) & (rows < y1 + margin)
