"""Pieces the detection, segmentation, video and optical-flow tasks share: images as detectors and segmenters
take them, the feature stages of a trunk found from its structure and the shapes one pass gives, feature-map
records from any layout, and the task of models whose heads read a dict of feature maps.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ImageError, UsageError
from .base import ROOTS, Task, stage_children, trunk_root

__all__ = ["TaskImages", "task_images", "trunk_root", "stage_children", "stage_ends", "feature_records", "ROOTS",
           "HeadsTask"]


@dataclass(frozen=True)
class TaskImages:
    """Images as detectors and segmenters take them: float (3, H, W) in [0, 1], each its own size."""

    tensors: tuple[torch.Tensor, ...]
    photos: tuple[np.ndarray, ...]  # uint8 (H, W, 3): the same pixels
    names: tuple[str, ...]
    normalized: bool = False  # True: the tensors are already what the model eats (from an InputBatch)

    def __len__(self) -> int:
        return len(self.tensors)


def _to_tensor(item: Any) -> torch.Tensor:
    from PIL import Image

    if isinstance(item, Image.Image):
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ImageError(f"an image array must be (H, W, 3) uint8 or float in [0, 1], got shape {array.shape}")
        array = array[..., :3] if array.shape[2] != 1 else np.repeat(array, 3, axis=2)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        return tensor.float() / 255.0 if array.dtype == np.uint8 else tensor.float()
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ImageError(f"an image tensor must be (3, H, W) with values in [0, 1], got {tuple(item.shape)}")
        return item.float() / 255.0 if item.dtype == torch.uint8 else item.float()
    raise ImageError(f"cannot read an image from {type(item).__name__}: pass a path, a PIL image, an (H, W, 3) "
                     "array, or a (3, H, W) / (N, 3, H, W) tensor in [0, 1]")


def task_images(images: Any, names: Sequence[str] | None = None) -> TaskImages:
    """Images from a (N, 3, H, W) or (3, H, W) tensor in [0, 1], a path, a PIL image, an array, or a list of those.

    An ``introspect.inputs.InputBatch`` is taken as it is: its tensor is what the model eats
    (for a detector: pixels in [0, 1]; the detector normalises them itself).
    """
    from ..images import load_images

    if hasattr(images, "tensor") and hasattr(images, "names") and hasattr(images, "photos"):  # an InputBatch
        return TaskImages(tuple(images.tensor.unbind(0)), tuple(np.asarray(p) for p in images.photos),
                          tuple(images.names), normalized=True)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: list[Any] = list(images.unbind(0))
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ImageError("no image given: pass at least one path, PIL image, array or tensor")
    pairs: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            for name, image in load_images([item]):
                pairs.append((name, _to_tensor(image)))
        else:
            pairs.append((f"image{i}", _to_tensor(item)))
    labels = tuple(names) if names else tuple(name for name, _ in pairs)
    if len(labels) != len(pairs):
        raise UsageError(f"names= has {len(labels)} entries for {len(pairs)} images: give one name per image")
    tensors = tuple(t.detach() for _, t in pairs)
    photos = tuple((t.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                   for t in tensors)
    return TaskImages(tensors, photos, labels)


def stage_ends(shapes: Mapping[str, tuple[int, ...]], limit: int = 6) -> list[str]:
    """The layers (in run order) after which the spatial size changes: the last ``limit`` stage ends."""
    names = list(shapes)
    ends = [n for n, after in zip(names, names[1:] + [None]) if after is None or shapes[after] != shapes[n]]
    return ends[-limit:]


def feature_records(activations: Mapping[str, torch.Tensor], names: Sequence[str], layers: Sequence[str] | None,
                    max_channels: int, as_map: Callable[[torch.Tensor], torch.Tensor] = lambda a: a) -> list:
    """Feature-map records of ``layers`` (default: the stage ends among ``activations``), one per layer and input.

    ``as_map`` turns each activation into (N, C, H, W) (a clip's middle frame); others are left out.
    """
    from ..engine.features import feature_map
    from ..layers import LayerChoice

    maps = {layer: as_map(a) for layer, a in activations.items()}
    maps = {layer: m for layer, m in maps.items() if m.ndim == 4}
    chosen = list(layers) if layers else stage_ends({k: tuple(v.shape[2:]) for k, v in maps.items()})
    return [feature_map(LayerChoice(layer), name, maps[layer][n], max_channels) for n, name in enumerate(names)
            for layer in chosen if layer in maps]


@dataclass(frozen=True)
class HeadsTask(Task):
    """Tasks whose heads read a dict of feature maps (detection, segmentation): those maps are the CAM's
    gradient leaves, the trunk's stages the feature maps, and one pass of the model serves all of them.

    A subclass gives :meth:`run_pass` (one forward pass over images of one size, returning a record with
    ``forward`` (:class:`~introspect.engine.forward.ForwardPass`) and ``release()``), :meth:`explain`
    (CAM results from that pass) and :meth:`check_cam_options`.
    """

    def read_inputs(self, inputs: Any, loaded: Any) -> Any:
        from ..inputs import prepare_inputs

        return prepare_inputs(inputs, loaded)

    @abstractmethod
    def run_pass(self, ctx: Any, batch: Any, methods: Sequence[str], capture: Sequence[str]) -> Any:
        """One forward pass over ``batch`` (a ``TaskImages``)."""

    @abstractmethod
    def explain(self, ctx: Any, methods: Sequence[str]) -> list:
        """CAM results of ``ctx.forward`` for ``methods``."""

    def check_cam_options(self, ctx: Any) -> None:
        """Refuse CAM options that do not fit the task (before anything is written)."""

    def prepare_cams(self, ctx: Any) -> None:
        from ..engine.cam import single_pass_methods
        from ..layers import resolve_layer

        self.check_cam_options(ctx)
        methods = single_pass_methods(ctx.cam.methods or self.default_cam or "gradcam", self.name)
        if ctx.cam.layer:
            resolve_layer(ctx.model, ctx.cam.layer)
        ctx.state["cam_methods"] = methods
        ctx.explain = True
        ctx.info["cam methods"] = ", ".join(methods)

    def explained_layer(self, loaded: Any, layer: str | None = None) -> str | None:
        """The layer a CAM pass explains, ``layer`` when the caller names one; None: the maps the heads read
        (the pass finds them)."""
        return layer

    def forward(self, ctx: Any) -> Any:
        methods = ctx.state.get("cam_methods", ()) if ctx.explain else ()
        return self.run_pass(ctx, task_images(ctx.batch), methods, ctx.capture)

    def feature_maps(self, ctx: Any) -> list:
        activations = ctx.forward.forward.activations
        found = {name: activations[name] for name in ctx.state.get("feature_capture", ()) if name in activations}
        return feature_records(found, ctx.batch.names, ctx.features.layers, ctx.features.max_channels)

    def cam_results(self, ctx: Any) -> list:
        results = self.explain(ctx, ctx.state["cam_methods"])
        for result in results:
            ctx.info.setdefault("cam layer", result.layer + (f" ({', '.join(result.levels)})"
                                                             if any(result.levels) else ""))
        return results

    def _probe(self, loaded: Any) -> Any:
        """One pass of a blank image of the model's size, capturing the trunk's stages (``--list-layers``)."""
        from ..context import RunContext

        size = loaded.input_size
        capture = stage_children(loaded.model, trunk_root(loaded.model, ROOTS["image"]))
        blank = task_images(torch.zeros(1, 3, size, size))
        found = self.run_pass(RunContext(loaded=loaded, task=self), blank, ("eigencam",), capture)
        return found

    def cam_layer_name(self, loaded: Any, layer: str | None = None) -> str | None:
        return layer or self._probe(loaded).forward.layer or None

    def feature_layer_names(self, loaded: Any) -> list[str]:
        outputs = self._probe(loaded).forward.activations
        return stage_ends({name: tuple(t.shape[2:]) for name, t in outputs.items() if t.ndim == 4})
