"""The options of a run, grouped in frozen dataclasses: the one copy of every default.

``report()``, the analyzers' keyword arguments and the CLI's flags all read their
defaults from these fields, so a default is changed in one place. Each group checks
its own values when it is made and names the bad parameter (``topk=0``); the CLI
turns parameter names into its flags.

Example::

    introspect.report(loaded, ["cat.png"], sections="cam",
                      cam=introspect.CamOptions(methods="gradcam,layercam", topk=5))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentError

__all__ = [
    "DEFAULT_LOGDIR",
    "BATCH_SIZE",
    "LoadOptions",
    "CamOptions",
    "FeatureOptions",
    "SaliencyOptions",
    "FilterOptions",
    "DetectionOptions",
]

DEFAULT_LOGDIR = "runs"
BATCH_SIZE = 8  # images per shared forward pass in a report


def _names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """A comma string or a sequence of names as a tuple (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(str(item) for item in value)


def _whole(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{name}={value!r} must be a whole number, {minimum} or more", parameter=name)


@dataclass(frozen=True)
class LoadOptions:
    """How a model given by name is loaded (see :func:`introspect.load_model`).

    Args:
        weights: ``auto`` (DEFAULT weights if cached or downloadable, else random with a
            warning), ``DEFAULT``, an enum name such as ``IMAGENET1K_V1``, ``none`` (random),
            or the path of a state_dict file.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        input_size: the square input side (default: the weights' crop size).
        categories: class names, one per output class, class 0 first: a list, or the path of a labels
            file (one name a line, or a JSON list); default: the checkpoint's or the weights' own.
        model_args: keyword arguments of a model given by import path (``package.module:callable``):
            a dict, or ``"key=value"`` strings.
    """

    weights: str | None = "auto"
    device: str | None = "cpu"
    input_size: int | None = None
    categories: Sequence[str] | str | os.PathLike | None = None
    model_args: Mapping[str, Any] | Sequence[str] | None = None

    def __post_init__(self) -> None:
        from .user_model import parse_model_args

        if self.model_args is not None:  # "key=value" strings checked now: the CLI's --model-arg
            object.__setattr__(self, "model_args", parse_model_args(self.model_args))
        if isinstance(self.categories, list):
            object.__setattr__(self, "categories", tuple(self.categories))


@dataclass(frozen=True)
class CamOptions:
    """Class activation maps: which methods, on which layer, for which classes.

    Args:
        methods: CAM method names, a comma string or a sequence (see ``introspect.CAM_METHODS``); default
            (None): the model's task's own, gradcam (eigencam for int8 quantized models, which have no autograd).
        layer: the target layer's name (default: picked from the model's structure).
        topk: how many of the top classes to explain per image.
        targets: explain these classes (indices or names) instead of the top-k.
        colormap: the matplotlib colormap of the overlays.
    """

    methods: str | Sequence[str] | None = None
    layer: str | None = None
    topk: int = 3
    targets: Sequence[int | str] | None = None
    colormap: str = "jet"

    def __post_init__(self) -> None:
        _whole(self.topk, "topk", 1)
        object.__setattr__(self, "methods", _names(self.methods) or None)
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))


@dataclass(frozen=True)
class FeatureOptions:
    """Feature maps: which layers, and how many channels of each to draw.

    Args:
        layers: layer names (default: each stage's output).
        max_channels: the most active channels drawn per layer.
    """

    layers: Sequence[str] | None = None
    max_channels: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _names(self.layers))
        _whole(self.max_channels, "max_channels", 1)


@dataclass(frozen=True)
class SaliencyOptions:
    """Input-gradient saliency.

    Args:
        methods: ``vanilla``, ``guided``, ``guidedgradcam`` (a comma string or a sequence).
        topk: how many of the top classes to explain per image.
    """

    methods: str | Sequence[str] = "vanilla,guided,guidedgradcam"
    topk: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", _names(self.methods) or ())
        _whole(self.topk, "topk", 1)


@dataclass(frozen=True)
class FilterOptions:
    """Activation maximisation of the first filters of some layers.

    Args:
        layers: layer names (default: the first, middle and last stage output).
        count: how many filters per layer (the first ``count``).
        steps: gradient-ascent steps per layer.
        size: side of the synthesised images (default 96, or the model's fixed input size).
        budget_s: wall-clock budget in seconds for all layers together (None: no limit).
    """

    layers: Sequence[str] | None = None
    count: int = 8
    steps: int = 64
    size: int | None = None
    budget_s: float | None = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _names(self.layers))
        _whole(self.count, "count", 1)
        _whole(self.steps, "steps", 1)
        if self.size is not None:
            _whole(self.size, "size", 8)
        if self.budget_s is not None and not self.budget_s > 0:
            raise ArgumentError(f"budget_s={self.budget_s!r} must be a positive number of seconds (or None)",
                                parameter="budget_s")


@dataclass(frozen=True)
class DetectionOptions:
    """What a detection model's report draws.

    Args:
        score_threshold: the lowest score of a detection drawn and listed, from 0 to 1.
    """

    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        value = self.score_threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ArgumentError(f"score_threshold={value!r} must be a score from 0 to 1", parameter="score_threshold")
