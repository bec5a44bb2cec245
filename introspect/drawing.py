"""Drawing: heatmaps in colour, overlays on photos, grids of tiles and labelled panels.

Pure functions of numpy arrays (no files, no models). Every image they return is a
``uint8`` numpy array laid out height x width x 3 (RGB). matplotlib (colormaps) is
imported only by :func:`colorize`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from introspect.errors import ArgumentError

__all__ = ["CARD_WIDTH", "LABEL_PX", "load_font", "MIN_PANEL_SIDE", "normalize01", "colorize", "overlay", "tile_grid",
           "readable_font_px", "text_width", "wrap_text", "fits", "label_image", "enlarge", "labelled_panels",
           "DISTINCT_COLORS", "distinct_colors", "draw_boxes", "titled_rows", "grid_with_row_labels"]


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


CARD_WIDTH = 340
"""Pixels: how wide TensorBoard shows an image in its IMAGES cards at their default size (a 1600-px window);
a wider image is scaled down to it, so labels are drawn large enough to stay readable after that."""

LABEL_PX = 14
"""Pixels: the font size every label has once TensorBoard has scaled the image to :data:`CARD_WIDTH` (its
letters, ascender to descender, then stand 11 px or more)."""


def readable_font_px(image_width: int) -> int:
    """The font size, in the image's own pixels, whose text reads :data:`LABEL_PX` tall once an image
    ``image_width`` pixels wide is shown in a TensorBoard card (scaled to :data:`CARD_WIDTH`)."""
    return max(LABEL_PX, math.ceil(LABEL_PX * max(int(image_width), 1) / CARD_WIDTH))


@functools.lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` px, loaded once per size (its loader decodes the embedded font every call)."""
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


_PROBE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_width(text: str, font_px: int) -> float:
    """Width in pixels of one line of ``text`` at ``font_px``."""
    box = _PROBE.textbbox((0, 0), text, font=load_font(font_px))
    return float(box[2] - box[0])


def wrap_text(text: str, font_px: int, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (at its explicit newlines, then between
    words); a word wider than ``width`` stays whole (:func:`fits` says whether one does)."""
    lines: list[str] = []
    for part in str(text).split("\n"):
        words = part.split()
        line = ""
        for word in words:
            trial = f"{line} {word}" if line else word
            if line and text_width(trial, font_px) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def fits(text: str, font_px: int, width: int, max_lines: int) -> bool:
    """Whether ``text`` wraps into at most ``max_lines`` lines of ``width`` pixels at ``font_px``, no word cut."""
    lines = wrap_text(text, font_px, width)
    return len(lines) <= max_lines and all(text_width(line, font_px) <= width for line in lines)


def _line_height(font_px: int) -> int:
    box = _PROBE.textbbox((0, 0), "Agjy|", font=load_font(font_px))
    return int(box[3] - min(box[1], 0)) + max(2, font_px // 6)


def label_image(rgb: np.ndarray, text: str, font_px: int | None = None, lines: int = 1,
                background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Put a strip of dark text above an image (e.g. "tabby cat 87.0%").

    Args:
        rgb: the image, uint8 ``(H, W, 3)`` (or ``(H, W)``).
        text: the label; wrapped (at newlines, then between words) into at most ``lines`` lines, the last
            shortened with an ellipsis if it still does not fit the width.
        font_px: the font size in pixels (default: :func:`readable_font_px` of the image's own width).
        lines: the strip's height in lines (labels of panels shown together use the same count, so they line up).
        background: the strip's colour.

    Returns:
        uint8 ``(H + strip, W, 3)``; the strip's height depends only on the font size and ``lines``.

    Raises:
        ArgumentError: ``rgb`` is not an image.
    """
    photo = _as_rgb(rgb)
    h, w = photo.shape[:2]
    size = int(font_px) if font_px else readable_font_px(w)
    font = load_font(size)
    pad = max(3, size // 5)
    usable = max(1, w - 2 * pad)
    lines = max(1, int(lines))
    wrapped = [" ".join(line.split()) for line in wrap_text(str(text), size, usable)]
    if len(wrapped) > lines:
        wrapped = wrapped[: lines - 1] + [" ".join(wrapped[lines - 1:])]
    for i, line in enumerate(wrapped):  # shorten with an ellipsis to fit
        if line and text_width(line, size) > usable:
            while len(line) > 1 and text_width(line + "...", size) > usable:
                line = line[:-1]
            wrapped[i] = line.rstrip() + "..."
    step = _line_height(size)
    top = _PROBE.textbbox((0, 0), "Agjy|", font=font)[1]
    strip_h = step * lines + 2 * pad
    canvas = Image.new("RGB", (w, strip_h + h), tuple(int(c) for c in background))
    canvas.paste(Image.fromarray(photo), (0, strip_h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(wrapped):
        if line:
            draw.text((pad, pad + i * step - min(top, 0)), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def enlarge(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """The image scaled up (bilinear) so its shorter side is at least ``min_side`` pixels; as it is when it is."""
    photo = _as_rgb(rgb)
    h, w = photo.shape[:2]
    if min(h, w) >= min_side:
        return photo
    k = min_side / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR), dtype=np.uint8).copy()


MIN_PANEL_SIDE = 160
"""Pixels: panels smaller than this (audit thumbnails, small inputs) are enlarged before labelling."""


def labelled_panels(images: Sequence[np.ndarray], labels: Sequence[str], padding: int = 4,
                    columns: int | None = None, max_columns: int = 5, max_lines: int = 2) -> np.ndarray:
    """Same-size images, each under its label, in a grid whose labels stay readable in a TensorBoard card.

    The grid takes as many columns (up to ``max_columns``) as let every label fit its panel, whole, in
    ``max_lines`` lines at the font that reads :data:`LABEL_PX` tall once the grid is scaled to
    :data:`CARD_WIDTH`; long labels give fewer columns (down to one per row). Panels narrower than
    :data:`MIN_PANEL_SIDE` are enlarged first.

    Args:
        images: uint8 ``(H, W, 3)`` images, all the same size.
        labels: one label per image (explicit newlines start new lines).
        padding: pixels between and around the panels.
        columns: a fixed number of columns (e.g. one per method); the font still follows the grid's width.
        max_columns: most columns when ``columns`` is not given.
        max_lines: lines a label may wrap into.

    Returns:
        uint8 ``(H', W', 3)``.

    Raises:
        ArgumentError: ``images`` and ``labels`` differ in length, or ``images`` is empty.
    """
    if len(images) != len(labels) or not len(images):
        raise ArgumentError(f"images has {len(images)} entries and labels {len(labels)}: give one label per image "
                            "(at least one)", parameter="labels")
    panels = [enlarge(image, MIN_PANEL_SIDE) for image in images]
    w = panels[0].shape[1]
    n = len(panels)
    max_lines = max(max_lines, *(str(label).count("\n") + 1 for label in labels))

    def font_for(cols: int) -> int:
        return readable_font_px(cols * (w + padding) + padding)

    def usable(size: int) -> int:
        return w - 2 * max(3, size // 5)

    if columns is not None:
        cols = max(1, min(int(columns), n))
    else:
        cols = 1
        for c in range(min(n, max_columns), 0, -1):
            size = font_for(c)
            if all(fits(str(label), size, usable(size), max_lines) for label in labels):
                cols = c
                break
    size = font_for(cols)
    lines = max(len(wrap_text(str(label), size, usable(size))) for label in labels)
    lines = min(max(lines, 1), max_lines)
    tiles = [label_image(image, str(label), font_px=size, lines=lines) for image, label in zip(panels, labels)]
    return tile_grid(np.stack(tiles), ncols=cols, padding=padding)


# Twenty colours told apart easily (Sasha Trubetskoy's list), for boxes and classes drawn together.
DISTINCT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (0, 0, 0))


def distinct_colors(keys: Sequence[object]) -> list[tuple[int, int, int]]:
    """One colour per key, the same key the same colour, different keys different colours (in the order the keys
    first appear; past twenty keys the colours repeat)."""
    order: dict[object, int] = {}
    for key in keys:
        order.setdefault(key, len(order))
    return [DISTINCT_COLORS[order[key] % len(DISTINCT_COLORS)] for key in keys]


def _text_color(fill: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``fill``."""
    r, g, b = (int(c) for c in fill[:3])
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_boxes(rgb: np.ndarray, boxes: np.ndarray, labels: Sequence[str],
               colors: Sequence[tuple[int, int, int]], line_width: int | None = None) -> np.ndarray:
    """Boxes with their labels on filled tags of the box's colour, no tag over another.

    Each tag goes inside the box's top-left corner, else just above the box, else just below it, else
    lower down inside the box, wherever it covers no tag placed before it (boxes come best first, so the
    best keep their place); a tag with no free place is left out. The font reads :data:`LABEL_PX` tall once
    the image is scaled to a TensorBoard card (:func:`readable_font_px`).

    Args:
        rgb: the image, uint8 ``(H, W, 3)``.
        boxes: ``(D, 4)`` ``(x0, y0, x1, y1)`` in the image's pixels.
        labels: one label per box ("" for none).
        colors: one RGB colour per box (see :func:`distinct_colors`).
        line_width: the outline's width (default: 1 px per 200 px of the longer side, at least 2).

    Returns:
        uint8 ``(H, W, 3)``.
    """
    photo = _as_rgb(rgb)
    h, w = photo.shape[:2]
    canvas = Image.fromarray(photo.copy())
    draw = ImageDraw.Draw(canvas)
    width = line_width or max(2, round(max(h, w) / 200))
    coords = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for box, color in zip(coords, colors):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=tuple(color), width=width)
    size = readable_font_px(w)
    font = load_font(size)
    pad = max(2, size // 6)
    bbox = _PROBE.textbbox((0, 0), "Agjy|", font=font)
    tag_h = int(bbox[3] - min(bbox[1], 0)) + 2 * pad
    placed: list[tuple[int, int, int, int]] = []
    for box, label, color in zip(coords, labels, colors):
        if not label:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        tag_w = int(text_width(label, size)) + 2 * pad
        x = int(np.clip(x0, 0, max(0, w - tag_w)))
        candidates = [y0, y0 - tag_h, y1] + list(range(y0 + tag_h, max(y0 + tag_h, y1 - tag_h) + 1, tag_h))
        spot = None
        for y in candidates:
            if y < 0 or y + tag_h > h:
                continue
            rect = (x, y, x + tag_w, y + tag_h)
            if not any(_overlaps(rect, other) for other in placed):
                spot = rect
                break
        if spot is None:
            continue
        placed.append(spot)
        draw.rectangle([spot[0], spot[1], spot[2] - 1, spot[3] - 1], fill=tuple(color))
        draw.text((spot[0] + pad, spot[1] + pad - min(bbox[1], 0)), label, fill=_text_color(color), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def titled_rows(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], column_labels: Sequence[str],
                padding: int = 2) -> np.ndarray:
    """Rows of same-size tiles (e.g. one row of frames per class), each row under a title bar spanning it and
    each tile under its column's label (e.g. ``t=3``), all at a font readable in a TensorBoard card.

    Args:
        rows: per row, one uint8 ``(h, w, 3)`` tile per column.
        titles: one title per row (e.g. "tabby 75.0%").
        column_labels: one label per column, drawn over every tile of that column.
        padding: pixels between the tiles.

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        ArgumentError: rows, titles and column labels do not match.
    """
    if not len(rows) or len(rows) != len(titles) or any(len(row) != len(column_labels) for row in rows):
        raise ArgumentError(f"rows has {len(rows)} rows for {len(titles)} titles and {len(column_labels)} column "
                            "labels: give one title per row and one tile per column label", parameter="rows")
    tiles = [[enlarge(tile, 96) for tile in row] for row in rows]
    w = tiles[0][0].shape[1]
    width = len(column_labels) * (w + padding) + padding
    size = readable_font_px(width)
    bands = []
    for row, title in zip(tiles, titles):
        labelled = np.stack([label_image(tile, label, font_px=size) for tile, label in zip(row, column_labels)])
        band = tile_grid(labelled, ncols=len(column_labels), padding=padding)
        bands.append(label_image(band, title, font_px=size, background=(235, 235, 235)))
    return np.concatenate(bands, axis=0)


def grid_with_row_labels(tiles: np.ndarray, row_labels: Sequence[str], title: str, padding: int = 1) -> np.ndarray:
    """A ``(rows, columns, h, w[, 3])`` block of tiles as one grid, each row's label to its left and a title above.

    Args:
        tiles: uint8 or float in [0, 1]; rows x columns tiles.
        row_labels: one label per row (e.g. ``t=0``).
        title: one line above the grid (e.g. "filters 0-15").
        padding: pixels between the tiles.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    t = np.asarray(tiles)
    rows, cols = t.shape[:2]
    if rows != len(row_labels):
        raise ArgumentError(f"tiles has {rows} rows for {len(row_labels)} row labels: give one label per row",
                            parameter="row_labels")
    grid = tile_grid(t.reshape(rows * cols, *t.shape[2:]), ncols=cols, padding=padding)
    tile_h = (grid.shape[0] - padding) // rows
    margin_guess = 0
    for _ in range(2):  # the font depends on the full width, the margin on the font
        size = readable_font_px(grid.shape[1] + margin_guess)
        margin_guess = int(max(text_width(label, size) for label in row_labels)) + 2 * max(3, size // 5)
    size = readable_font_px(grid.shape[1] + margin_guess)
    canvas = Image.new("RGB", (grid.shape[1] + margin_guess, grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (margin_guess, 0))
    draw = ImageDraw.Draw(canvas)
    font = load_font(size)
    top = _PROBE.textbbox((0, 0), "Agjy|", font=font)
    for r, label in enumerate(row_labels):
        y = padding + r * tile_h + (tile_h - (top[3] - top[1])) // 2 - top[1]
        draw.text((max(3, size // 5), y), label, fill=(0, 0, 0), font=font)
    return label_image(np.asarray(canvas, dtype=np.uint8), title, font_px=size)
