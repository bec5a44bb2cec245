"""What a loaded model is, and the small facts every layer needs about a module: the record that
carries a model with its preprocessing and class names, where a module's weights live, and the
standard ImageNet preprocessing. It imports nothing of introspect but its errors, so every
module (the engine, the tasks, the loaders, the analyzers) can stand on it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["LoadedModel", "unwrap", "device_and_dtype", "imagenet_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """A model ready to inspect, with what is needed to feed it and name its classes."""

    model: nn.Module
    name: str
    weights: str  # what was loaded: an enum name, a file, or "random"
    weights_source: str  # where it came from, in words
    transform: Any  # image -> normalised tensor (a torchvision ImageClassification preset)
    categories: tuple[str, ...]
    input_size: int
    device: torch.device
    warnings: list[str] = field(default_factory=list)
    task: str = "classification"  # a key of introspect.tasks.TASKS
    clip_length: int | None = None  # frames per clip, for video models
    categories_source: str = ""  # where the class names came from, in words (introspect.categories)
    weights_path: str | None = None  # the absolute path of the weights file loaded, if one was

    @property
    def pretrained(self) -> bool:
        """Whether the weights are trained ones (not a random initialisation)."""
        return self.weights != "random"


def unwrap(model: nn.Module | LoadedModel) -> tuple[nn.Module, LoadedModel | None]:
    """The module to inspect, and the loaded-model record if one was given.

    Args:
        model: a module, or a :class:`LoadedModel`.

    Returns:
        ``(module, record)``; the record is None for a bare module.
    """
    if isinstance(model, LoadedModel):
        return model.model, model
    return model, None


def device_and_dtype(module: nn.Module, default_device: str | torch.device = "cpu") -> tuple[torch.device, torch.dtype]:
    """Where a module's weights live and the floating dtype its inputs should have.

    Args:
        module: any module.
        default_device: the device of a module that holds no parameters or buffers.

    Returns:
        ``(device, dtype)``: the device of the first parameter (or, without parameters,
        the first buffer), and the dtype of the first floating-point parameter (or
        buffer); ``torch.float32`` where there is none.
    """
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    floating = next((t for t in itertools.chain(module.parameters(), module.buffers()) if t.is_floating_point()),
                    None)
    device = first.device if first is not None else torch.device(default_device)
    return device, floating.dtype if floating is not None else torch.float32


def imagenet_transform(crop_size: int = 224, resize_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The standard ImageNet preprocessing (resize, centre crop, normalise) at a given size.

    Args:
        crop_size: side of the square the model sees.
        resize_size: shorter side after the resize (default ``crop_size * 256 / 224``).
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.

    Returns:
        A torchvision ``ImageClassification`` transform (PIL image -> ``(3, H, W)`` tensor).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    resize = resize_size if resize_size is not None else round(crop_size * 256 / 224)
    return ImageClassification(crop_size=crop_size, resize_size=resize, mean=mean, std=std,
                               interpolation=InterpolationMode.BILINEAR)
