"""Optical flow (RAFT): pairs of frames in, the flow image out (``torchvision.utils.flow_to_image``).

Frames come from two or more images (consecutive pairs) or from one clip (an animated
GIF, a folder of frames, a video file: its consecutive frames). Each frame is resized and
centre-cropped to a square whose side is a multiple of 8, scaled to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch

from ..errors import TargetError, UsageError
from .base import InputRecipe, Task
from .common import ROOTS, feature_records, stage_children, stage_ends, trunk_root
from ..records import FlowResult

__all__ = ["FlowTask", "FramePairs", "MAX_PAIRS", "prepare_pairs", "flow_results"]

MAX_PAIRS = 4
FLOW_MIN_SIZE = 128
"""RAFT's frames: at least this side, a multiple of 8."""


@dataclass(frozen=True)
class FramePairs:
    """Preprocessed frame pairs: ``first[i]`` and ``second[i]`` make pair ``names[i]``."""

    first: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    second: torch.Tensor
    photos: np.ndarray  # uint8 (N, 2, H, W, 3)
    names: tuple[str, ...]

    def __len__(self) -> int:
        return self.first.shape[0]

    def __getitem__(self, part: slice) -> FramePairs:
        return FramePairs(self.first[part], self.second[part], self.photos[part], self.names[part])


def prepare_pairs(paths: Sequence[str | Path], loaded, max_pairs: int = MAX_PAIRS) -> FramePairs:
    """Consecutive frame pairs from ``paths``: two or more images, or one clip.

    Args:
        paths: image files (pairs 1-2, 2-3, ...) or one clip (see :func:`introspect.tasks.video.read_frames`).
        loaded: the loaded RAFT model (its transform).
        max_pairs: most pairs kept.
    Returns:
        :class:`FramePairs`.
    """
    from ..images import find_images, load_image, preprocess, tag_names, to_display
    from .video import VIDEO_SUFFIXES, read_frames

    paths = [Path(p) for p in paths]
    frames: list = []
    stems: list[str] = []
    if len(paths) == 1:
        source = paths[0]
        is_clip = source.is_dir() or source.suffix.lower() in VIDEO_SUFFIXES or source.suffix.lower() == ".gif"
        if is_clip:
            images, still = read_frames(source)
            if not still:
                frames = images
                stems = [f"{source.stem}_{i}" for i in range(len(images))]
    else:
        files = find_images(paths)
        frames = [load_image(f) for f in files]
        stems = [f.stem for f in files]
    if len(frames) < 2:
        raise UsageError(f"{loaded.name} estimates the motion between two frames but got one: give two images "
                         "(images=[first, second]) or one clip (an animated GIF, a folder of frames or a video)")
    frames, stems = frames[: max_pairs + 1], stems[: max_pairs + 1]
    tensor = torch.cat([preprocess(f, loaded.transform) for f in frames])
    photos = to_display(tensor, loaded.transform.mean, loaded.transform.std)
    names = tag_names([f"{a}-{b}" for a, b in zip(stems, stems[1:])])
    return FramePairs(first=tensor[:-1], second=tensor[1:], photos=np.stack([photos[:-1], photos[1:]], axis=1),
                      names=tuple(names))


def flow_results(flows: torch.Tensor, pairs: FramePairs) -> list[FlowResult]:
    """One :class:`FlowResult` per pair from RAFT's final flow (N, 2, H, W)."""
    from torchvision.utils import flow_to_image

    from ..drawing import labelled_panels

    flows = flows.detach().float().cpu()
    pictures = flow_to_image(flows).permute(0, 2, 3, 1).numpy()
    results = []
    for n, name in enumerate(pairs.names):
        magnitude = flows[n].pow(2).sum(dim=0).sqrt()
        image = labelled_panels([pairs.photos[n, 0], pairs.photos[n, 1], pictures[n]], ["frame 1", "frame 2", "flow"],
                                columns=3, padding=2)
        results.append(FlowResult(pair_name=name, flow=flows[n].numpy(), mean_magnitude=float(magnitude.mean()),
                                  max_magnitude=float(magnitude.max()), image=image))
    return results


@dataclass(frozen=True)
class FlowTask(Task):
    """Optical flow (RAFT): two frames -> the flow image, its magnitudes, and the feature encoder's maps."""

    def recognizes(self, module: Any) -> bool:
        """RAFT: a correlation block and a recurrent update block beside its feature encoder."""
        return all(isinstance(getattr(module, name, None), torch.nn.Module)
                   for name in ("feature_encoder", "corr_block", "update_block"))

    def input_recipe(self, model_name: str, net: Any, weights: Any, input_size: int | None) -> InputRecipe:
        from ..errors import InputSizeError
        from ..loaded import imagenet_transform

        size = input_size or FLOW_MIN_SIZE * 2
        if size < FLOW_MIN_SIZE or size % 8:
            raise InputSizeError(f"{model_name} needs frames of at least {FLOW_MIN_SIZE} pixels whose side is a "
                                 f"multiple of 8, not {size}: use input_size={max(FLOW_MIN_SIZE, size + (-size) % 8)}",
                                 parameter="input_size")
        # RAFT takes pixels scaled to [-1, 1] (torchvision's OpticalFlow preset).
        return InputRecipe(size, imagenet_transform(size, size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))

    def read_inputs(self, inputs: Any, loaded: Any) -> FramePairs:
        if isinstance(inputs, FramePairs):
            return inputs
        paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        if not all(isinstance(p, (str, Path)) for p in paths):
            raise UsageError(f"{loaded.name} takes frames by path: pass inputs=[FIRST, SECOND] or one clip",
                             parameter="inputs")
        return prepare_pairs(paths, loaded)

    def shown_inputs(self, batch: FramePairs) -> list:
        return []  # flow/<pair> shows both frames beside the flow

    def example_input(self, loaded: Any) -> tuple[torch.Tensor, torch.Tensor]:
        size = loaded.input_size
        return torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size)

    def check_options(self, ctx: Any) -> None:
        if ctx.cam.targets:
            raise TargetError(f"targets={str(ctx.cam.targets[0])!r} does not apply: {ctx.loaded.name} estimates "
                              "optical flow and has no classes, drop it", parameter="targets")

    def forward(self, ctx: Any):
        from ..engine.forward import run_forward

        return run_forward(ctx.model, (ctx.batch.first, ctx.batch.second), capture=ctx.capture)

    def predictions(self, ctx: Any) -> list:
        output = ctx.forward.output
        flows = output[-1] if isinstance(output, (list, tuple)) else output
        return flow_results(flows, ctx.batch)

    def feature_maps(self, ctx: Any) -> list:
        count = len(ctx.batch)  # the encoder ran on both frames at once: keep the first frame's maps
        found = {name: ctx.forward.activations[name][:count] for name in ctx.state["feature_capture"]}
        return feature_records(found, ctx.batch.names, ctx.features.layers, ctx.features.max_channels)

    def feature_layer_names(self, loaded: Any) -> list[str]:
        from ..engine.forward import run_forward

        capture = stage_children(loaded.model, trunk_root(loaded.model, ROOTS["frame pair"]))
        found = run_forward(loaded.model, self.example_input(loaded), capture=capture)
        return stage_ends({name: tuple(a.shape[2:]) for name, a in found.activations.items() if a.ndim == 4})
