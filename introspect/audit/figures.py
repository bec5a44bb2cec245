"""The audit's pictures and curves, made once when the result is put together: gallery entries, gallery grids,
per-class mean CAM panels, the confusion matrix figure, and the precision-recall curves.

The records carry what is drawn here, so the TensorBoard layouts only map them to tags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..records import PrCurve

__all__ = ["draw_entry", "gallery_image", "mean_cam_panel", "confusion_figure", "pr_curve"]


def _drawing():
    """introspect's drawing helpers (overlay, labelled_row, tile_grid): the one import of them here."""
    from .. import drawing

    return drawing


def draw_entry(entry: dict, names: Sequence[str], colormap: str = "jet") -> np.ndarray:
    """A gallery entry as a labelled pair: the photo and its first CAM over it."""
    draw = _drawing()
    photo = entry["thumbnail"].numpy()
    heat = entry["heat"].float().numpy()

    def name(i: int) -> str:
        return "-" if i < 0 else (names[i] if i < len(names) else f"class {i}")

    energy = entry["energy"]
    right = f"{name(entry['predicted'])} {entry['probability']:.0%}" + \
        ("" if math.isnan(energy) else f" e={energy:.2f}")
    return draw.labelled_row([photo, draw.overlay(photo, heat, colormap)], [f"{name(entry['label'])}", right],
                             padding=2)


def gallery_image(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels in a grid (4 per row)."""
    return _drawing().tile_grid(np.stack(panels), ncols=min(4, len(panels)), padding=6)


def mean_cam_panel(photo: np.ndarray, maps: np.ndarray, label: str, methods: Sequence[str],
                   colormap: str = "jet") -> np.ndarray:
    """A class's mean image, then each method's mean map over it, labelled."""
    draw = _drawing()
    panels = [photo] + [draw.overlay(photo, m, colormap) for m in maps]
    return draw.labelled_row(panels, [label] + list(methods))


def confusion_figure(counts: np.ndarray, names: Sequence[str], top1: float, measure: str = "top-1") -> np.ndarray:
    """The confusion matrix as an RGB image: rows true class, columns predicted, colours row-normalised.

    Args:
        counts: int (K, K) images (or pixels) per (true, predicted) class.
        names: the K class names, in the matrix's order.
        top1: the accuracy, for the title.
        measure: what the accuracy is called in the title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(names)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, np.maximum(rows, 1))
    side = min(14.0, max(4.0, 0.35 * k + 2))
    figure = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:
        axes.set_xticks(range(k), names, rotation=90, fontsize=8)
        axes.set_yticks(range(k), names, fontsize=8)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if counts[i, j]:
                        axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                                  color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix: {k} classes present,\n{measure} {top1:.1%}", fontsize=10)
    figure.tight_layout()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def pr_curve(class_index: int, class_name: str, positive: np.ndarray, negative: np.ndarray) -> PrCurve:
    """One class's precision-recall curve from histograms of p(class): threshold i is ``i / bins``.

    Args:
        positive: counts of the class's own images per score bin.
        negative: counts of the other labelled images per score bin.
    """
    tp = np.cumsum(positive[::-1])[::-1].astype(np.float64)  # images of the class scoring >= threshold
    fp = np.cumsum(negative[::-1])[::-1].astype(np.float64)
    fn = positive.sum() - tp
    tn = negative.sum() - fp
    return PrCurve(class_index=class_index, class_name=class_name, tp=tp, fp=fp, tn=tn, fn=fn,
                   precision=tp / np.maximum(tp + fp, 1), recall=tp / np.maximum(tp + fn, 1))
