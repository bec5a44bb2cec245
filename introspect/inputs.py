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
from torch import nn

from .models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, imagenet_transform

__all__ = ["InputBatch", "prepare_inputs", "unwrap", "Inputs"]

Inputs = Union[torch.Tensor, str, Path, "PIL.Image.Image", Sequence]  # noqa: F821


@dataclass(frozen=True)
class InputBatch:
    """A preprocessed batch and what it looks like."""

    tensor: torch.Tensor  # (N, 3, H, W), normalised
    photos: np.ndarray  # (N, H, W, 3) uint8: the pixels the model saw
    names: tuple[str, ...]

    def __len__(self) -> int:
        return self.tensor.shape[0]


def unwrap(model: nn.Module | LoadedModel) -> tuple[nn.Module, LoadedModel | None]:
    """The module, and the loaded-model record if one was given."""
    if isinstance(model, LoadedModel):
        return model.model, model
    return model, None


def _mean_std(transform: object) -> tuple[Sequence[float], Sequence[float]]:
    return getattr(transform, "mean", IMAGENET_MEAN), getattr(transform, "std", IMAGENET_STD)


def prepare_inputs(
    inputs: Inputs,
    loaded: LoadedModel | None = None,
    names: Sequence[str] | None = None,
) -> InputBatch:
    """A batch from a tensor (N,3,H,W or 3,H,W), a PIL image, a path or folder, or a list of those."""
    from .images import load_images, preprocess, to_display

    transform = loaded.transform if loaded is not None else imagenet_transform(224)
    mean, std = _mean_std(transform)
    if isinstance(inputs, InputBatch):
        return inputs
    if isinstance(inputs, torch.Tensor):
        tensor = inputs.unsqueeze(0) if inputs.ndim == 3 else inputs
        if tensor.ndim != 4:
            raise ValueError(f"expected an image tensor (N, C, H, W) or (C, H, W), got {tuple(inputs.shape)}")
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
