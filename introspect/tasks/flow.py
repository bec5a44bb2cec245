"""Optical flow (RAFT): pairs of frames in, the flow image out (``torchvision.utils.flow_to_image``).

Frames come from two or more images (consecutive pairs) or from one clip (an animated
GIF, a folder of frames, a video file: its consecutive frames). Each frame is resized and
centre-cropped to a square whose side is a multiple of 8, scaled to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..records import FlowResult

__all__ = ["FramePairs", "MAX_PAIRS", "prepare_pairs", "flow_results"]

MAX_PAIRS = 4


@dataclass(frozen=True)
class FramePairs:
    """Preprocessed frame pairs: ``first[i]`` and ``second[i]`` make pair ``names[i]``."""

    first: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    second: torch.Tensor
    photos: np.ndarray  # uint8 (N, 2, H, W, 3)
    names: tuple[str, ...]

    def __len__(self) -> int:
        return self.first.shape[0]


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

    from ..drawing import label_image, tile_grid

    flows = flows.detach().float().cpu()
    pictures = flow_to_image(flows).permute(0, 2, 3, 1).numpy()
    results = []
    for n, name in enumerate(pairs.names):
        magnitude = flows[n].pow(2).sum(dim=0).sqrt()
        tiles = [label_image(pairs.photos[n, 0], "frame 1"), label_image(pairs.photos[n, 1], "frame 2"),
                 label_image(pictures[n], "flow")]
        results.append(FlowResult(pair_name=name, flow=flows[n].numpy(), mean_magnitude=float(magnitude.mean()),
                                  max_magnitude=float(magnitude.max()),
                                  image=tile_grid(np.stack(tiles), ncols=3, padding=2)))
    return results
