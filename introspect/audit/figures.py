"""The audit's pictures and curves, made once when the result is put together: gallery entries, gallery grids,
per-class mean CAM panels, the confusion matrix figure, and the precision-recall curves.

The records carry what is drawn here, so the TensorBoard layouts only map them to tags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..records import PrCurve

__all__ = ["entry_pair", "entry_caption", "draw_entry", "gallery_image", "mean_cam_panel", "confusion_figure",
           "pr_curve"]


def _drawing():
    """introspect's drawing helpers (overlay, labelled_panels, draw_boxes): the one import of them here."""
    from .. import drawing

    return drawing


def _class_name(names: Sequence[str], i: int) -> str:
    return "-" if i < 0 else (names[i] if i < len(names) else f"class {i}")


def entry_pair(entry: dict, colormap: str = "jet") -> np.ndarray:
    """A gallery entry's photo beside its first CAM over it, its boxes drawn on both (uint8 HWC)."""
    draw = _drawing()
    photo = draw.enlarge(entry["thumbnail"].numpy(), draw.MIN_PANEL_SIDE)
    scale = photo.shape[0] / entry["thumbnail"].shape[0]
    heat = entry["heat"].float().numpy()
    boxes = np.asarray(entry.get("boxes") or [], dtype=np.float64).reshape(-1, 4) * scale
    sides = [photo, draw.overlay(photo, heat, colormap)]
    if len(boxes):
        sides = [draw.draw_boxes(side, boxes, [""] * len(boxes), [(255, 255, 255)] * len(boxes)) for side in sides]
    gap = np.full((photo.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([sides[0], gap, sides[1]], axis=1)


def entry_caption(entry: dict, names: Sequence[str], method: str) -> str:
    """Three short lines: the label, the model's top class with its probability, and the method whose map is shown
    (with boxes: the share of that map inside them)."""
    energy = entry["energy"]
    return "\n".join([f"label: {_class_name(names, entry['label'])}",
                      f"model: {_class_name(names, entry['predicted'])} {entry['probability']:.0%}",
                      f"{method}: {energy:.0%} in box" if not math.isnan(energy) else f"right: {method}'s map"])


def draw_entry(entry: dict, names: Sequence[str], method: str, colormap: str = "jet") -> np.ndarray:
    """A gallery entry on its own: the photo and ``method``'s map (boxes drawn), under its caption."""
    return _drawing().labelled_panels([entry_pair(entry, colormap)], [entry_caption(entry, names, method)],
                                      max_lines=3)


def gallery_image(pairs: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """Entries (:func:`entry_pair`) under their captions (:func:`entry_caption`), as many per row as stay
    readable in a TensorBoard card."""
    return _drawing().labelled_panels(list(pairs), list(captions), padding=8, max_columns=4, max_lines=3)


def mean_cam_panel(photo: np.ndarray, maps: np.ndarray, label: str, methods: Sequence[str],
                   colormap: str = "jet") -> np.ndarray:
    """A class's mean image, then each method's mean map over it, labelled."""
    draw = _drawing()
    panels = [photo] + [draw.overlay(photo, m, colormap) for m in maps]
    return draw.labelled_panels(panels, [label] + list(methods))


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
        ticks = 10 if k <= 20 else 8  # 10 pt at 100 dpi: 11 px and more once TensorBoard scales it to its card
        axes.set_xticks(range(k), names, rotation=90, fontsize=ticks)
        axes.set_yticks(range(k), names, fontsize=ticks)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if counts[i, j]:
                        axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                                  color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xlabel("predicted class", fontsize=11)
    axes.set_ylabel("true class", fontsize=11)
    axes.set_title(f"confusion matrix: {k} classes present,\n{measure} {top1:.1%}", fontsize=11)
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
