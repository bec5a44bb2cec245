"""Turn what a user hands an analyzer (paths, PIL images, tensors) into one batch.

The batch carries the normalised tensor the model eats, the same pixels as uint8
photos (for overlays that line up exactly), and a name per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from .errors import ArgumentError
from .loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, imagenet_transform

__all__ = ["InputBatch", "InputStream", "prepare_inputs", "stream_inputs", "Inputs"]

Inputs = Union[torch.Tensor, str, Path, "PIL.Image.Image", Sequence]  # noqa: F821


@dataclass(frozen=True)
class InputBatch:
    """A preprocessed batch and what it looks like."""

    tensor: torch.Tensor  # (N, 3, H, W), normalised
    photos: np.ndarray  # (N, H, W, 3) uint8: the pixels the model saw
    names: tuple[str, ...]

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, part: slice) -> InputBatch:
        return InputBatch(self.tensor[part], self.photos[part], self.names[part])


def _mean_std(transform: object) -> tuple[Sequence[float], Sequence[float]]:
    return getattr(transform, "mean", IMAGENET_MEAN), getattr(transform, "std", IMAGENET_STD)


def prepare_inputs(
    inputs: Inputs,
    loaded: LoadedModel | None = None,
    names: Sequence[str] | None = None,
) -> InputBatch:
    """One batch from what a user hands an analyzer.

    Args:
        inputs: a tensor ``(N, 3, H, W)`` or ``(3, H, W)`` (already normalised), a PIL
            image, a path or folder, a list of those, or an :class:`InputBatch` (returned as is).
        loaded: the model's record, whose transform preprocesses photos (default: ImageNet's at 224).
        names: one name per image (default: file stems, or ``image0``, ``image1``...).

    Returns:
        The batch: normalised tensor, the pixels the model sees, names.

    Raises:
        ArgumentError: a tensor that is not 3- or 4-dimensional.
        ImageError: a path that is missing or cannot be loaded.
    """
    from .images import load_images, preprocess, to_display

    transform = loaded.transform if loaded is not None else imagenet_transform(224)
    mean, std = _mean_std(transform)
    if isinstance(inputs, InputBatch):
        return inputs
    if isinstance(inputs, torch.Tensor):
        tensor = inputs.unsqueeze(0) if inputs.ndim == 3 else inputs
        if tensor.ndim != 4:
            raise ArgumentError(f"inputs is a tensor of shape {tuple(inputs.shape)}: give (N, C, H, W) or (C, H, W)",
                                parameter="inputs")
        labels = tuple(names) if names else tuple(f"image{i}" for i in range(tensor.shape[0]))
        return InputBatch(tensor=tensor, photos=to_display(tensor.detach().cpu().float(), mean, std), names=labels)
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    pairs: list[tuple[str, object]] = []
    paths = [item for item in items if isinstance(item, (str, Path))]
    if paths:
        pairs.extend(load_images(paths))
    pairs.extend((f"image{i}", item) for i, item in enumerate(items) if not isinstance(item, (str, Path)))
    tensor = torch.cat([preprocess(image.convert("RGB"), transform) for _, image in pairs])
    labels = tuple(names) if names else tuple(name for name, _ in pairs)
    return InputBatch(tensor=tensor, photos=to_display(tensor, mean, std), names=labels)


@dataclass(frozen=True)
class InputStream:
    """Image files read and preprocessed one batch at a time: memory grows with the batch, not the folder.

    ``len()`` is the number of files; iterating yields :class:`InputBatch` es whose
    names are unique and tag-safe across the whole stream. ``files`` lists the path of
    each name. A bad file found in a folder is skipped with an IntrospectWarning; a bad
    file named explicitly raises :class:`ImageError` when its batch is reached.
    """

    entries: tuple[tuple[Path, bool, str], ...]  # (file, found in a folder, name)
    loaded: LoadedModel | None
    batch_size: int

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def files(self) -> dict[str, Path]:
        """Name -> file, for every file in the stream."""
        return {name: path for path, _, name in self.entries}

    def __iter__(self):
        import warnings

        from .errors import ImageError, IntrospectWarning
        from .images import load_image, preprocess, to_display

        transform = self.loaded.transform if self.loaded is not None else imagenet_transform(224)
        mean, std = _mean_std(transform)
        for start in range(0, len(self.entries), self.batch_size):
            tensors, names = [], []
            for path, in_folder, name in self.entries[start:start + self.batch_size]:
                try:
                    tensors.append(preprocess(load_image(path), transform))
                except ImageError as error:
                    if not in_folder:
                        raise
                    warnings.warn(f"skipped {path}: {error}", IntrospectWarning, stacklevel=2)
                    continue
                names.append(name)
            if tensors:
                tensor = torch.cat(tensors)
                yield InputBatch(tensor=tensor, photos=to_display(tensor, mean, std), names=tuple(names))


def stream_inputs(paths: Sequence[str | Path] | str | Path, loaded: LoadedModel | None = None,
                  batch_size: int = 16) -> InputStream:
    """Image files to be read one batch at a time (folders expanded now, nothing decoded yet).

    Args:
        paths: files and folders.
        loaded: the model's record, whose transform preprocesses photos (default: ImageNet's at 224).
        batch_size: images per batch.

    Returns:
        An :class:`InputStream`; iterate it for :class:`InputBatch` es.

    Raises:
        ArgumentError: ``batch_size`` is below 1.
        ImageError: a path is missing, or a folder holds no image files.
    """
    from .images import expand_paths, tag_names

    if batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size} must be at least 1", parameter="batch_size")
    found = expand_paths([paths] if isinstance(paths, (str, Path)) else list(paths))
    names = tag_names([f.stem for f, _ in found])
    return InputStream(tuple((f, in_folder, name) for (f, in_folder), name in zip(found, names)), loaded,
                       batch_size)
