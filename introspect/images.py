"""Loading, converting and preprocessing photos; drawing grids and overlays.

This is the one place in introspect that touches image files and pixels. Every
image it returns is a ``uint8`` numpy array laid out height x width x channels
(HWC), or an RGB 8-bit :class:`PIL.Image.Image` from :func:`load_image`.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from introspect.errors import ImageError, IntrospectWarning, UsageError

__all__ = [
    "IMAGE_SUFFIXES",
    "load_image",
    "find_images",
    "load_images",
    "preprocess",
    "to_display",
    "colorize",
    "overlay",
    "tile_grid",
    "label_image",
    "normalize01",
    "tag_names",
]

#: Lower-case file suffixes that :func:`find_images` picks up inside a folder.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

#: Most pixels decoded at once (after JPEG draft reduction). Well above a
#: 10000x10000 photo, well below what would exhaust memory.
_MAX_PIXELS = 12_000 * 12_000

# PIL's decompression-bomb limit is a module global; it is lifted only while we
# open and decode (with our own, explicit size check) and restored afterwards.
_PIL_LIMIT_LOCK = threading.Lock()

_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_SUFFIX_LIST = " ".join(sorted(IMAGE_SUFFIXES))
_EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------- loading


def load_image(path: str | Path, max_side: int = 4096) -> Image.Image:
    """Load one image file as an RGB 8-bit PIL image.

    Odd inputs are made usable: CMYK, 16/32-bit and float greyscale, palettes,
    transparency (composited onto white), EXIF rotation, multi-frame files (first
    frame, with a warning) and huge images (shrunk so the longer side is at most
    ``max_side``, with a warning). Anything that cannot be read raises
    :class:`ImageError` with a one-line message naming the file and the fix.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image file not found: {p}; check the path and spelling")
    if p.is_dir():
        raise ImageError(f"{p} is a folder, not an image file; name an image file inside it")
    if not p.is_file():
        raise ImageError(f"{p} is not a regular file; pass an image file")
    try:
        size_bytes = p.stat().st_size
    except OSError as e:
        raise ImageError(f"cannot read image file {p}: {e.strerror or e}; check its permissions") from e
    if size_bytes == 0:
        raise ImageError(f"image file is empty (0 bytes): {p}; re-save or re-download it")

    with _PIL_LIMIT_LOCK:
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own, explicit size check replaces PIL's
        try:
            rgb, original_size, frames = _open_and_decode(p, max_side)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit

    if frames > 1:
        warnings.warn(
            f"{p.name} has {frames} frames; only the first frame is used",
            IntrospectWarning,
            stacklevel=2,
        )
    if max(original_size) > max_side:
        warnings.warn(
            f"{p.name} is {original_size[0]}x{original_size[1]} pixels; "
            f"resized to {rgb.size[0]}x{rgb.size[1]} (longer side at most {max_side})",
            IntrospectWarning,
            stacklevel=2,
        )
    return rgb


def _open_and_decode(p: Path, max_side: int) -> tuple[Image.Image, tuple[int, int], int]:
    """Open, fully decode and convert the first frame; returns (RGB image, original size, frames)."""
    try:
        with Image.open(p) as img:
            original_size = img.size
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(0)
            if img.format == "JPEG" and max(img.size) > max_side:
                # Decode at 1/2, 1/4 or 1/8 scale straight away: memory stays bounded.
                img.draft("RGB", (max_side, max_side))
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageError(f"image {p} has zero size ({w}x{h}); re-save or re-export it")
            if w * h > _MAX_PIXELS:
                raise ImageError(
                    f"image {p} is too large to load safely ({w}x{h} pixels); "
                    f"shrink it to at most {_MAX_PIXELS} pixels (e.g. 12000x12000) first"
                )
            img.load()  # force the full decode here, so truncation is caught here
            out: Image.Image = img
            try:
                if img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
                    out = ImageOps.exif_transpose(img) or img
            except Exception:  # a broken EXIF block: keep the pixels as stored
                out = img
            try:
                out = _to_rgb(out)
            except Exception as e:  # an exotic mode PIL cannot convert
                raise ImageError(
                    f"cannot convert image {p} (mode {img.mode}) to RGB ({e}); re-save it as an RGB PNG or JPEG"
                ) from e
            if max(out.size) > max_side:
                scale = max_side / max(out.size)
                size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
                # Box-reduce by an integer factor first, then Lanczos: fast and still antialiased.
                out = out.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)
            if out is img:  # closing the file would invalidate it
                out = img.copy()
            return out, original_size, frames
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(
            f"not an image file that can be read: {p}; use a photo in one of {_SUFFIX_LIST}"
        ) from e
    except MemoryError as e:
        raise ImageError(f"not enough memory to decode image {p}; shrink it first") from e
    except PermissionError as e:
        raise ImageError(f"no permission to read image file {p}; check its permissions") from e
    except Exception as e:  # truncated, corrupt, or otherwise undecodable
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageError(
            f"image file is truncated or corrupt: {p} ({reason}); re-save or re-download it"
        ) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded PIL image to RGB 8-bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _INT_MODES or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img), is_float=(mode == "F"))).convert("RGB")
    has_alpha = mode in _TRANSPARENT_MODES or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_uint8(arr: np.ndarray, is_float: bool) -> np.ndarray:
    """Map high-bit-depth or float greyscale to 0..255 without clipping."""
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if is_float and lo >= 0.0 and hi <= 1.0:
        out = a * 255.0  # float images in the usual [0, 1] convention
    elif lo >= 0.0 and hi <= 255.0:
        out = a  # already 8-bit values stored wide
    elif lo >= 0.0:
        out = a * (255.0 / hi)  # scale by the actual maximum, e.g. 0..4095 or 0..65535
    else:
        out = (a / 2 - lo / 2) * (255.0 / (hi / 2 - lo / 2))  # halves avoid overflow
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _expand(paths: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """(file, found_in_a_folder) for each input path; folders expanded non-recursively."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[tuple[Path, bool]] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ImageError(f"image path not found: {p}; check the path and spelling")
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
            )
            if not found:
                raise ImageError(f"folder {p} has no image files ({_SUFFIX_LIST}); add some or name files directly")
            entries = [(f, True) for f in found]
        else:
            entries = [(p, False)]
        for f, in_folder in entries:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append((f, in_folder))
    return out


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, plus the image files directly inside any folders (sorted).

    A named file is kept whatever its suffix (:func:`load_image` judges it). A
    missing path or a folder without image files raises :class:`ImageError`.
    """
    return [f for f, _ in _expand(paths)]


def _tag_names(stems: Sequence[str]) -> list[str]:
    """TensorBoard-safe ([A-Za-z0-9_.-]), unique names from file stems: cat, cat_2, ..."""
    bases = [re.sub(r"[^A-Za-z0-9_.-]", "_", s).strip(".") or "image" for s in stems]
    reserved = set(bases)  # a real "cat_2" keeps its name; a second "cat" goes around it
    taken: set[str] = set()
    names: list[str] = []
    for base in bases:
        name = base
        if name in taken:
            n = 2
            while f"{base}_{n}" in taken or f"{base}_{n}" in reserved:
                n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names.append(name)
    return names


def tag_names(stems: Sequence[str]) -> list[str]:
    """TensorBoard-safe ([A-Za-z0-9_.-]), unique names from file stems: cat, cat_2, ..."""
    return _tag_names(stems)


def load_images(paths: Sequence[str | Path], max_side: int = 4096) -> list[tuple[str, Image.Image]]:
    """Load files and folders as ``(name, RGB image)`` pairs with unique, tag-safe names.

    A bad file named explicitly raises :class:`ImageError`; a bad file found in
    a folder is skipped with an :class:`IntrospectWarning`. If nothing loads,
    :class:`ImageError` is raised.
    """
    files = _expand(paths)
    loaded: list[tuple[Path, Image.Image]] = []
    skipped: list[str] = []
    for f, in_folder in files:
        try:
            loaded.append((f, load_image(f, max_side=max_side)))
        except ImageError as e:
            if not in_folder:
                raise
            skipped.append(f.name)
            warnings.warn(f"skipped {f}: {e}", IntrospectWarning, stacklevel=2)
    if not loaded:
        shown = ", ".join(skipped[:5]) + (f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else "")
        raise ImageError(f"none of the images could be loaded ({shown}); pass at least one readable photo")
    names = _tag_names([f.stem for f, _ in loaded])
    return [(name, img) for name, (_, img) in zip(names, loaded)]


# --------------------------------------------------------------------------- tensors


def preprocess(image: Image.Image, transform: Callable[[Any], Any]) -> torch.Tensor:
    """Apply a torchvision transform to a PIL image; returns a (1, 3, H, W) float tensor."""
    if image.mode != "RGB":
        image = _to_rgb(image)
    out = transform(image)
    if isinstance(out, Image.Image):
        out = torch.from_numpy(np.asarray(_to_rgb(out), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"transform returned {type(out).__name__}, expected a tensor")
    if not out.is_floating_point():
        out = out.float() / 255.0
    out = out.float()
    if out.ndim == 3:
        out = out.unsqueeze(0)
    if out.ndim != 4 or out.shape[:2] != (1, 3):
        raise ValueError(f"transform gave a tensor of shape {tuple(out.shape)}, expected (3, H, W)")
    return out.contiguous()


def to_display(batch_tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo normalisation of an (N, 3, H, W) batch; returns the pixels the model saw, uint8 (N, H, W, 3)."""
    x = batch_tensor.detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    x = torch.nan_to_num(x * s + m, nan=0.0, posinf=1.0, neginf=0.0)
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


# --------------------------------------------------------------------------- drawing


def normalize01(x: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] as float32; constant or all-non-finite input gives zeros."""
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
    """Map (H, W) values in [0, 1] through a matplotlib colormap; returns uint8 (H, W, 3). NaN/Inf -> 0."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise UsageError(
            f"unknown colormap {colormap!r}; use a matplotlib colormap name such as jet, viridis, inferno or magma"
        ) from None
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) array, got shape {v.shape}")
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


def _as_rgb(a: np.ndarray) -> np.ndarray:
    """uint8 HWC with 3 channels from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    a = _as_uint8(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def overlay(rgb: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised (H, W) heatmap in [0, 1] over a uint8 HWC photo; returns uint8 HWC.

    The heatmap is resized bilinearly to the photo's size if they differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    photo = _as_rgb(rgb)
    h, w = photo.shape[:2]
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {hm.shape}")
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
    """Arrange N tiles, (N, h, w) or (N, h, w, 3), uint8 or float in [0, 1], into one uint8 HWC grid.

    ``ncols`` defaults to ceil(sqrt(N)). ``padding`` pixels of ``pad_value``
    separate the tiles and frame the grid, so the grid is
    ``rows*(h'+padding)+padding`` high. With ``scale_to`` each tile is enlarged
    by nearest neighbour (integer factor) until its longer side is at least that.
    """
    t = _as_uint8(np.asarray(tiles))
    if t.ndim == 3:
        t = t[..., None]
    if t.ndim != 4 or t.shape[3] not in (1, 3):
        raise ValueError(f"tiles must be (N, h, w) or (N, h, w, 3), got shape {t.shape}")
    n, h, w = t.shape[:3]
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"tile_grid needs at least one non-empty tile, got shape {t.shape}")
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
    """Return the image with a white strip of black text above it (e.g. "tabby cat 0.87")."""
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
    """Same-size uint8 HWC images side by side, each with its label above it (one panel per input)."""
    return tile_grid(np.stack([label_image(image, label) for image, label in zip(images, labels)]),
                     ncols=len(images), padding=padding)
