"""Drawing: heatmaps in colour, overlays on photos, grids of tiles and labelled panels.

Pure functions of numpy arrays (no files, no models). Every image they return is a
``uint8`` numpy array laid out height x width x 3 (RGB). matplotlib (colormaps) is
imported only by :func:`colorize`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from introspect.errors import ArgumentError

__all__ = ["normalize01", "colorize", "overlay", "tile_grid", "label_image", "labelled_row"]


def normalize01(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1].

    Args:
        x: any array; NaN and Inf are left out of the range and become 0.

    Returns:
        float32 array of the same shape; constant or all-non-finite input gives zeros.
    """
    a = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.float32)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if not hi > lo:
        return np.zeros(a.shape, np.float32)
    with np.errstate(all="ignore"):
        out = (a / 2 - lo / 2) / (hi / 2 - lo / 2)  # halves avoid overflow at float extremes
    out = np.where(finite, out, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def colorize(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map values in [0, 1] through a matplotlib colormap.

    Args:
        values: ``(H, W)`` values in [0, 1] (clipped; NaN and Inf count as 0).
        colormap: a matplotlib colormap name.

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        ArgumentError: ``colormap`` is not a matplotlib colormap, or ``values`` is not two-dimensional.
    """
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ArgumentError(
            f"colormap={colormap!r} is not a matplotlib colormap: use one such as jet, viridis, inferno or magma",
            parameter="colormap",
        ) from None
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ArgumentError(f"values has shape {v.shape}: give an (H, W) array", parameter="values")
    v = np.clip(np.where(np.isfinite(v), v, 0.0), 0.0, 1.0)
    return np.ascontiguousarray(cmap(v, bytes=True)[..., :3], dtype=np.uint8)


def _as_uint8(a: np.ndarray) -> np.ndarray:
    """uint8 from uint8, other integers (clipped) or floats in [0, 1]."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    f = np.asarray(a, dtype=np.float64)
    f = np.where(np.isfinite(f), f, 0.0)
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def _as_rgb(a: np.ndarray, parameter: str = "rgb") -> np.ndarray:
    """uint8 HWC with 3 channels from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    a = _as_uint8(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ArgumentError(f"{parameter} has shape {a.shape}: give an (H, W) or (H, W, 3) image",
                            parameter=parameter)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def overlay(rgb: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised heatmap over a photo.

    Args:
        rgb: the photo, uint8 ``(H, W, 3)`` (or ``(H, W)``, or floats in [0, 1]).
        heatmap: ``(h, w)`` values in [0, 1]; resized bilinearly to the photo's size if they differ.
        colormap: a matplotlib colormap name.
        alpha: weight of the heatmap's colour, in [0, 1].

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        ArgumentError: ``alpha`` is outside [0, 1], an array has the wrong number of dimensions, or
            ``colormap`` is not a matplotlib colormap.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"alpha={alpha} must be in [0, 1]", parameter="alpha")
    photo = _as_rgb(rgb)
    h, w = photo.shape[:2]
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim != 2:
        raise ArgumentError(f"heatmap has shape {hm.shape}: give an (H, W) array", parameter="heatmap")
    hm = np.where(np.isfinite(hm), hm, 0.0).astype(np.float32)
    if hm.shape != (h, w):
        hm = np.asarray(Image.fromarray(hm, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    color = colorize(hm, colormap).astype(np.float32)
    out = (1.0 - alpha) * photo.astype(np.float32) + alpha * color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tile_grid(
    tiles: np.ndarray,
    ncols: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
    scale_to: int | None = None,
) -> np.ndarray:
    """Arrange tiles into one grid image.

    Args:
        tiles: ``(N, h, w)`` or ``(N, h, w, 3)``, uint8 or float in [0, 1].
        ncols: tiles per row (default ``ceil(sqrt(N))``).
        padding: pixels of ``pad_value`` between the tiles and around the grid, so the
            grid is ``rows * (h' + padding) + padding`` high.
        pad_value: grey level of the padding, 0-255.
        scale_to: enlarge each tile by nearest neighbour (integer factor) until its
            longer side is at least this many pixels.

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        ArgumentError: ``tiles`` has the wrong shape or is empty.
    """
    t = _as_uint8(np.asarray(tiles))
    if t.ndim == 3:
        t = t[..., None]
    if t.ndim != 4 or t.shape[3] not in (1, 3):
        raise ArgumentError(f"tiles has shape {t.shape}: give (N, h, w) or (N, h, w, 3)", parameter="tiles")
    n, h, w = t.shape[:3]
    if n == 0 or h == 0 or w == 0:
        raise ArgumentError(f"tiles has shape {t.shape}: give at least one non-empty tile", parameter="tiles")
    if t.shape[3] == 1:
        t = np.repeat(t, 3, axis=3)
    if scale_to is not None and scale_to > max(h, w):
        k = math.ceil(scale_to / max(h, w))
        t = np.repeat(np.repeat(t, k, axis=1), k, axis=2)
        h, w = h * k, w * k
    padding = max(0, int(padding))
    cols = max(1, min(int(ncols) if ncols else math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, 3),
        int(np.clip(pad_value, 0, 255)),
        dtype=np.uint8,
    )
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = t[i]
    return grid


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def label_image(rgb: np.ndarray, text: str) -> np.ndarray:
    """Put a white strip of black text above an image (e.g. "tabby cat 0.87").

    Args:
        rgb: the image, uint8 ``(H, W, 3)`` (or ``(H, W)``).
        text: one line; shortened with an ellipsis to fit the width.

    Returns:
        uint8 ``(H + strip, W, 3)``; the strip's height depends only on the width.

    Raises:
        ArgumentError: ``rgb`` is not an image.
    """
    photo = _as_rgb(rgb)
    h, w = photo.shape[:2]
    text = " ".join(str(text).split())
    font = _font(max(10, min(w // 20, 32)))
    pad = 3
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(s: str) -> float:
        box = probe.textbbox((0, 0), s, font=font)
        return box[2] - box[0]

    if text and width(text) > w - 2 * pad:  # shorten with an ellipsis to fit
        while len(text) > 1 and width(text + "...") > w - 2 * pad:
            text = text[:-1]
        text = text.rstrip() + "..."
    box = probe.textbbox((0, 0), "Agjy|", font=font)  # fixed strip height: labelled panels line up
    strip_h = int(box[3] - min(box[1], 0)) + 2 * pad
    canvas = Image.new("RGB", (w, strip_h + h), (255, 255, 255))
    canvas.paste(Image.fromarray(photo), (0, strip_h))
    if text:
        ImageDraw.Draw(canvas).text((pad, pad - min(box[1], 0)), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def labelled_row(images: Sequence[np.ndarray], labels: Sequence[str], padding: int = 4) -> np.ndarray:
    """Same-size images side by side, each with its label above it (one panel per input).

    Args:
        images: uint8 ``(H, W, 3)`` images, all the same size.
        labels: one label per image.
        padding: pixels between and around the images.

    Returns:
        uint8 ``(H', W', 3)``.

    Raises:
        ArgumentError: ``images`` and ``labels`` differ in length, or ``images`` is empty.
    """
    if len(images) != len(labels) or not len(images):
        raise ArgumentError(f"images has {len(images)} entries and labels {len(labels)}: give one label per image "
                            "(at least one)", parameter="labels")
    return tile_grid(np.stack([label_image(image, label) for image, label in zip(images, labels)]),
                     ncols=len(images), padding=padding)
