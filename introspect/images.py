"""Finding, loading and preprocessing photos.

This is the one place in introspect that touches image files. Every image it
returns is an RGB 8-bit :class:`PIL.Image.Image` (:func:`load_image`) or a
``uint8`` numpy array laid out height x width x channels (:func:`to_display`).
Drawing (heatmaps, overlays, grids, labels) lives in :mod:`introspect.drawing`.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from introspect.errors import ArgumentError, ArgumentTypeError, ImageError, IntrospectWarning

__all__ = [
    "IMAGE_SUFFIXES",
    "load_image",
    "expand_paths",
    "find_images",
    "tag_names",
    "load_images",
    "preprocess",
    "to_display",
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
    ``max_side``, with a warning).

    Args:
        path: the image file.
        max_side: longest side in pixels; larger images are shrunk to it.

    Returns:
        The image, mode ``"RGB"``.

    Raises:
        ImageError: the file is missing, empty, unreadable, corrupt or too large.
        ArgumentError: ``max_side`` is below 1.
    """
    if max_side < 1:
        raise ArgumentError(f"max_side={max_side} must be at least 1", parameter="max_side")
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


def expand_paths(paths: Sequence[str | Path] | str | Path) -> list[tuple[Path, bool]]:
    """Files as given, plus the image files directly inside any folders (sorted), each once.

    Args:
        paths: files and folders (a single path is accepted too).

    Returns:
        ``(file, found_in_a_folder)`` for each file, duplicates dropped.

    Raises:
        ImageError: a path is missing, or a folder holds no image files.
    """
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


def find_images(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """Files as given, plus the image files directly inside any folders (sorted).

    A named file is kept whatever its suffix (:func:`load_image` judges it).

    Args:
        paths: files and folders.

    Returns:
        The files, each once.

    Raises:
        ImageError: a path is missing, or a folder holds no image files.
    """
    return [f for f, _ in expand_paths(paths)]


def tag_names(stems: Sequence[str]) -> list[str]:
    """TensorBoard-safe (``[A-Za-z0-9_.-]``), unique names from file stems: cat, cat_2, ...

    Args:
        stems: file names without suffix, in order.

    Returns:
        One name per stem; a later duplicate gets the first free ``_2``, ``_3``... suffix.
    """
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


def load_images(paths: Sequence[str | Path], max_side: int = 4096) -> list[tuple[str, Image.Image]]:
    """Load files and folders as ``(name, RGB image)`` pairs with unique, tag-safe names.

    A bad file found in a folder is skipped with an :class:`IntrospectWarning`.

    Args:
        paths: files and folders.
        max_side: longest side in pixels (see :func:`load_image`).

    Returns:
        ``(name, image)`` pairs in the order found.

    Raises:
        ImageError: a named file cannot be loaded, or nothing loads at all.
    """
    files = expand_paths(paths)
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
    names = tag_names([f.stem for f, _ in loaded])
    return [(name, img) for name, (_, img) in zip(names, loaded)]


# --------------------------------------------------------------------------- tensors


def preprocess(image: Image.Image, transform: Callable[[Any], Any]) -> torch.Tensor:
    """Apply a torchvision transform to a PIL image.

    Args:
        image: the photo.
        transform: image -> ``(3, H, W)`` tensor (or a PIL image), e.g. a torchvision preset.

    Returns:
        A ``(1, 3, H, W)`` float32 tensor.

    Raises:
        ArgumentTypeError: ``transform`` returned neither a tensor nor a PIL image.
        ArgumentError: ``transform`` returned a tensor that is not ``(3, H, W)``.
    """
    if image.mode != "RGB":
        image = _to_rgb(image)
    out = transform(image)
    if isinstance(out, Image.Image):
        out = torch.from_numpy(np.asarray(_to_rgb(out), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if not isinstance(out, torch.Tensor):
        raise ArgumentTypeError(f"transform returned {type(out).__name__}: it must return a (3, H, W) tensor",
                                parameter="transform")
    if not out.is_floating_point():
        out = out.float() / 255.0
    out = out.float()
    if out.ndim == 3:
        out = out.unsqueeze(0)
    if out.ndim != 4 or out.shape[:2] != (1, 3):
        raise ArgumentError(f"transform gave a tensor of shape {tuple(out.shape)}: it must give (3, H, W)",
                            parameter="transform")
    return out.contiguous()


def to_display(batch_tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation of a batch: the pixels the model saw.

    Args:
        batch_tensor: ``(N, 3, H, W)`` normalised images.
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.

    Returns:
        uint8 ``(N, H, W, 3)``.

    Raises:
        ArgumentError: ``batch_tensor`` is not ``(N, 3, H, W)``.
    """
    x = batch_tensor.detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ArgumentError(f"batch_tensor has shape {tuple(x.shape)}: give an (N, 3, H, W) tensor",
                            parameter="batch_tensor")
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    x = torch.nan_to_num(x * s + m, nan=0.0, posinf=1.0, neginf=0.0)
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
