"""Video classifiers: clips in (animated GIF, folder of frames, video file, or a still photo repeated),
Kinetics-400 top-k out, and CAMs over time.

A clip is ``loaded.clip_length`` frames sampled evenly over the source, each frame
resized, centre-cropped and normalised with the weights' VideoClassification preset,
stacked as (N, C, T, H, W). The CAM layer is the model's last spatio-temporal layer:
the last top-level child whose output is 5-d (N, C, T, H, W), channels-last after a
LayerNorm (Swin3D), or tokens (N, 1 + T*H*W, C) (MViT). Gradient methods weight each
channel by its mean gradient over T, H and W together (pytorch-grad-cam's 5-d rule);
the (T, H, W) map is resized trilinearly to the clip.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.cam import CAM_METHODS, activation_maps, parse_cam_methods
from ..engine.classes import class_name
from ..errors import ImageError, LayerError, IntrospectWarning, UnknownLayerError, UnknownMethodError, UsageError
from ..engine.forward import ForwardPass, run_forward
from ..hooks import ModelScope, first_tensor
from ..layers import resolve_layer
from ..records import CamMap, CamResult, Predictions, Subject
from ..engine.targets import ClassScore, Target
from .base import InputRecipe, Task
from .common import ROOTS, feature_records, stage_children, stage_ends, trunk_root

__all__ = ["VideoTask", "VIDEO_SUFFIXES", "MIN_FRAME_SIDE", "ClipBatch", "VideoLayer", "read_frames", "prepare_clips",
           "video_cam_layer", "to_ncthw", "clip_predictions", "clip_cams", "video_available"]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
MIN_FRAME_SIDE = 16  # smaller frames carry no picture once upscaled to the model's size
MAX_STRIP_FRAMES = 8
#: Frames per clip for video models (torchvision's video recipes train on 16-frame clips).
CLIP_LENGTH = 16
#: Models whose absolute / relative position tables are sized for one frame size.
FIXED_SIZE = {"mvit_v1_b": 224, "mvit_v2_s": 224}


@dataclass(frozen=True)
class ClipBatch:
    """Preprocessed clips and what they look like."""

    tensor: torch.Tensor  # (N, 3, T, H, W), normalised
    frames: np.ndarray  # uint8 (N, T, H, W, 3): the pixels the model saw
    names: tuple[str, ...]
    static: tuple[bool, ...]  # True where a still photo was repeated

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, part: slice) -> ClipBatch:
        return ClipBatch(self.tensor[part], self.frames[part], self.names[part], self.static[part])


@dataclass(frozen=True)
class VideoLayer:
    """A video CAM layer and how to lay its output out as (N, C, T, H, W)."""

    name: str
    layout: str  # "ncthw", "nthwc" (channels-last) or "tokens" (N, 1 + T*H*W, C)


def video_available() -> bool:
    """Whether video files can be decoded here (PyAV, the ``introspect[video]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _decode_video(path: Path) -> list:
    if not video_available():
        raise ImageError(f"{path} is a video file, and decoding one needs PyAV: pip install 'introspect[video]' "
                         "(or av), or give an animated GIF or a folder of frames")
    import av

    try:
        with av.open(str(path)) as container:
            return [frame.to_image() for frame in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise ImageError(f"cannot decode video {path} ({type(exc).__name__}: {exc}); re-encode it or give its "
                         "frames as a folder of images") from None


def read_frames(path: str | Path) -> tuple[list, bool]:
    """The frames of one clip as RGB PIL images, and whether it is a still photo.

    Args:
        path: an animated GIF (or other multi-frame image), a folder of frames (sorted by name),
            a video file (needs PyAV), or a still photo.
    Returns:
        (frames, still).
    """
    from PIL import Image, ImageSequence

    from ..images import find_images, load_image

    p = Path(path)
    if p.is_dir():
        frames = [load_image(f) for f in sorted(find_images([p]))]
        still = False
    elif p.suffix.lower() in VIDEO_SUFFIXES:
        frames = [f.convert("RGB") for f in _decode_video(p)]
        still = False
    else:
        with warnings.catch_warnings():  # load_image warns that it keeps the first frame: all are read below
            warnings.simplefilter("ignore", IntrospectWarning)
            first = load_image(p)
        frames = [first]
        with Image.open(p) as img:
            if getattr(img, "n_frames", 1) > 1:
                frames = [f.convert("RGB") for f in ImageSequence.Iterator(img)]
        still = len(frames) == 1
    if not frames:
        raise ImageError(f"{p} holds no frames: give an animated GIF, a folder of frames or a video file")
    w, h = frames[0].size
    if min(w, h) < MIN_FRAME_SIDE:
        raise ImageError(f"{p} has {w}x{h} frames, too small to show a video model anything: give frames of at "
                         f"least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} pixels")
    return frames, still


def _sample(count: int, length: int) -> list[int]:
    """``length`` frame indices spread evenly over ``count`` frames (repeating frames of a short clip)."""
    return [int(round(i)) for i in np.linspace(0, count - 1, length)]


def prepare_clips(paths: Sequence[str | Path], loaded, length: int | None = None) -> ClipBatch:
    """A batch of clips for a video model.

    Args:
        paths: one clip per path (see :func:`read_frames`).
        loaded: the :class:`~introspect.models.LoadedModel` (its per-frame transform and clip length).
        length: frames per clip (default ``loaded.clip_length``).
    Returns:
        :class:`ClipBatch`; a still photo is repeated as a static clip, with an IntrospectWarning.
    """
    from torchvision.transforms.functional import pil_to_tensor

    from ..images import tag_names, to_display

    length = length or loaded.clip_length or 16
    if length < 1:
        raise UsageError(f"length={length} frames: give 1 or more")
    transform = loaded.transform
    tensors, frames, stills = [], [], []
    for path in paths:
        images, still = read_frames(path)
        if still:
            warnings.warn(f"{Path(path).name} is a still photo: shown to {loaded.name} as a static clip of "
                          f"{length} identical frames (no motion to see)", IntrospectWarning, stacklevel=2)
        picked = [images[i] for i in _sample(len(images), length)]
        size = picked[0].size
        raw = torch.stack([pil_to_tensor(img.convert("RGB").resize(size)) for img in picked])  # (T, 3, H, W) uint8
        clip = transform(raw)  # (3, T, H, W), normalised
        tensors.append(clip)
        frames.append(to_display(clip.permute(1, 0, 2, 3), transform.mean, transform.std))
        stills.append(still)
    names = tag_names([Path(p).stem or Path(p).name for p in paths])
    return ClipBatch(torch.stack(tensors), np.stack(frames), tuple(names), tuple(stills))


def video_cam_layer(model: nn.Module, clip: torch.Tensor, layer: str | None = None) -> VideoLayer:
    """The CAM layer of a video model: ``layer`` if given, else the last top-level child before the global
    pooling whose output is 5-d or tokens, found by running ``clip`` (N, 3, T, H, W) once through the engine
    (only the output shapes are kept; a child whose output holds no tensor is passed over)."""
    outputs: dict[str, tuple[int, ...]] = {}
    modules = {name: child for name, child in model.named_children()}
    if layer is not None:
        modules = {layer: resolve_layer(model, layer)}

    def recording(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            try:
                outputs.setdefault(name, tuple(first_tensor(output).shape))
            except TypeError:
                pass
        return hook

    def watch(scope: ModelScope) -> None:
        for name, module in modules.items():
            scope.forward_hook(module, recording(name))

    run_forward(model, clip, record=False, prepare=watch)
    names = list(modules)
    if layer is None:  # the head starts at the first pooling child: only what comes before it still has a layout
        pooling = [i for i, name in enumerate(names) if "pool" in type(modules[name]).__name__.lower()]
        names = names[: pooling[0]] if pooling else names
    candidates = [name for name in names if name in outputs and len(outputs[name]) in (3, 5)]
    if not candidates:
        raise UnknownLayerError(f"no layer of {type(model).__name__} has a spatio-temporal output to explain: "
                                "pass one with layer=NAME", parameter="layer") if layer is None else \
            UnknownLayerError(f"layer={layer!r} gives {outputs.get(layer)}, not a (N, C, T, H, W) or token output: "
                              "pick another", parameter="layer")
    name = candidates[-1]
    module = resolve_layer(model, name)
    if len(outputs[name]) == 3:
        return VideoLayer(name, "tokens")
    return VideoLayer(name, "nthwc" if isinstance(module, nn.LayerNorm) else "ncthw")


def to_ncthw(activation: torch.Tensor, layout: str, clip_shape: Sequence[int]) -> torch.Tensor:
    """A video layer's output as (N, C, T, H, W); tokens drop their class token and take the grid whose time
    length divides the clip's (MViT keeps T/2 and pools H, W to a square)."""
    if layout == "ncthw":
        return activation
    if layout == "nthwc":
        return activation.permute(0, 4, 1, 2, 3)
    n, tokens, channels = activation.shape
    t_in = int(clip_shape[2])
    for stride in (2, 1, 4, 8):
        t = max(1, t_in // stride)
        for drop in (1, 0):
            side = math.isqrt(max(tokens - drop, 0) // t)
            if side and t * side * side == tokens - drop:
                grid = activation[:, drop:, :].reshape(n, t, side, side, channels)
                return grid.permute(0, 4, 1, 2, 3)
    raise LayerError(f"cannot lay {tokens} tokens out as a (T, H, W) grid for a {t_in}-frame clip")


def clip_predictions(logits: torch.Tensor, names: Sequence[str], categories: Sequence[str],
                     topk: int = 5) -> list[Predictions]:
    """Top-k classes (Kinetics-400 names for torchvision's video models) of each clip."""
    probs = torch.softmax(logits.detach().float(), dim=-1).cpu()
    values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return [Predictions(image_name=name, indices=tuple(int(i) for i in idx),
                        names=tuple(class_name(categories, int(i)) for i in idx),
                        probabilities=tuple(float(v) for v in vals))
            for name, idx, vals in zip(names, indices, values)]


def _strip(overlays: np.ndarray, labels: Sequence[str], shown: Sequence[int]) -> np.ndarray:
    """One row of shown frames per class, under a bar with the class and its probability; each frame says its t."""
    from ..drawing import titled_rows

    return titled_rows([[overlays[j, t] for t in shown] for j in range(overlays.shape[0])], list(labels),
                       [f"t={t}" for t in shown])


def clip_cams(
    forward: ForwardPass,
    clips: ClipBatch,
    methods: Sequence[str],
    layer: VideoLayer,
    targets: Sequence[Sequence[Target]],
    categories: Sequence[str],
    *,
    colormap: str = "jet",
) -> list[CamResult]:
    """CAMs over time of every clip and method, from a forward pass that captured ``layer.name`` (and made it
    the gradient leaf when a gradient method is asked for).

    Args:
        forward: :func:`introspect.engine.forward.run_forward` on ``clips.tensor``.
        clips: the batch.
        methods: single-pass CAM method names.
        layer: from :func:`video_cam_layer`.
        targets: per clip, its k class targets (``ClassScore``).
        categories: class names.
    Returns:
        one :class:`CamResult` per method and clip.
    """
    from ..drawing import overlay

    size = tuple(clips.tensor.shape[2:])  # (T, H, W)
    activation = to_ncthw(forward.activations[layer.name], layer.layout, clips.tensor.shape).float()
    probs = forward.probabilities.cpu()
    results = []
    names = parse_cam_methods(methods)
    k = len(targets[0])
    raw = forward.gradients(targets)[""] if any(CAM_METHODS[m].uses_gradients and not CAM_METHODS[m].delegated
                                                for m in names) else None  # one backward for every method
    for name in names:
        method = CAM_METHODS[name]
        if method.delegated:
            raise UnknownMethodError(f"{name} is not offered for video models (it needs many forward passes): "
                                     f"pick one of {', '.join(n for n, m in CAM_METHODS.items() if not m.delegated)}")
        grads = None
        if method.uses_gradients:
            grads = torch.stack([to_ncthw(g, layer.layout, clips.tensor.shape) for g in raw]).float()
        maps = activation_maps(name, activation, grads, size).expand(k, -1, -1, -1, -1).cpu().numpy()
        shown = _sample(size[0], min(MAX_STRIP_FRAMES, size[0]))
        shown = list(dict.fromkeys(shown))
        for n, clip_name in enumerate(clips.names):
            indices = [int(t.index) for t in targets[n]]
            labels = [class_name(categories, i) for i in indices]
            heat = maps[:, n].astype(np.float32)  # (k, T, H, W)
            overlays = np.stack([np.stack([overlay(clips.frames[n, t], heat[j, t], colormap)
                                           for t in range(size[0])]) for j in range(len(indices))])
            subjects = [Subject("clip class", i, label, float(probs[n, i])) for i, label in zip(indices, labels)]
            entries = tuple(CamMap(method=name, subject=s, heatmap=heat[j], frames=overlays[j],
                                   image=_strip(overlays[j:j + 1], [s.caption], shown)) for j, s in enumerate(subjects))
            results.append(CamResult(method=name, layer=layer.name, image_name=clip_name, maps=entries,
                                     image=_strip(overlays, [s.caption for s in subjects], shown)))
    return results


def _channels_last(model: nn.Module) -> bool:
    """Whether the trunk lays its maps out as (N, T, H, W, C) (Swin3D, which has a ``patch_embed``)."""
    return hasattr(model, "patch_embed")


def _middle_frames(activation: torch.Tensor, clip_shape: Sequence[int], channels_last: bool) -> torch.Tensor:
    """A trunk layer's output as the (N, C, H, W) map of its middle time step (others returned as they are)."""
    if activation.ndim == 3:
        grid = to_ncthw(activation, "tokens", clip_shape)
    elif activation.ndim == 5:
        grid = to_ncthw(activation, "nthwc" if channels_last else "ncthw", clip_shape)
    else:
        return activation
    return grid[:, :, grid.shape[2] // 2]


@dataclass(frozen=True)
class VideoTask(Task):
    """Video classifiers: the top-k classes of each clip and a CAM over its frames."""

    def recognizes(self, module) -> bool:
        """A video classifier: its first convolution is 3-d (over time and space)."""
        first = next((m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))), None)
        return isinstance(first, torch.nn.Conv3d)

    def class_count(self, module) -> int:
        from .classification import output_classes

        return output_classes(module) or 0

    def default_categories(self, classes: int) -> tuple[str, ...] | None:
        from torchvision.models.video import R3D_18_Weights

        names = tuple(R3D_18_Weights.KINETICS400_V1.meta["categories"])
        return names if classes == len(names) else None

    def input_recipe(self, model_name: str, net, weights, input_size: int | None) -> InputRecipe:
        from torchvision.models.video import R3D_18_Weights
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms._presets import VideoClassification

        from ..errors import InputSizeError

        # a bare module (no torchvision weights): the Kinetics-400 preset torchvision's R3D/MC3/R(2+1)D use
        weights = weights if weights is not None else R3D_18_Weights.KINETICS400_V1
        preset = weights.transforms()
        crop = int(preset.crop_size[0])
        fixed = FIXED_SIZE.get(model_name)
        if fixed is not None and input_size not in (None, fixed):
            raise InputSizeError(f"{model_name} takes only {fixed}x{fixed} frames, not {input_size}: "
                                 f"use input_size={fixed}", parameter="input_size")
        size = input_size or crop
        resize = [round(size * s / crop) for s in preset.resize_size]
        # (T, 3, H, W) uint8 frames -> (3, T, H, W): resize, centre crop, scale, normalise
        transform = VideoClassification(crop_size=(size, size), resize_size=resize, mean=preset.mean,
                                        std=preset.std, interpolation=InterpolationMode.BILINEAR)
        temporal = weights.meta.get("min_temporal_size") or 1
        return InputRecipe(size, transform, max(CLIP_LENGTH, int(temporal)),
                           len(weights.meta.get("categories") or ()))

    def read_inputs(self, inputs, loaded) -> ClipBatch:
        if isinstance(inputs, ClipBatch):
            return inputs
        paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        if not all(isinstance(p, (str, Path)) for p in paths):
            raise UsageError(f"{loaded.name} takes clips by path (an animated GIF, a folder of frames, a video file "
                             "or a still photo): pass inputs=PATH", parameter="inputs")
        return prepare_clips(paths, loaded)

    def shown_inputs(self, batch: ClipBatch) -> list:
        return [(name, frames[len(frames) // 2]) for name, frames in zip(batch.names, batch.frames)]

    def example_input(self, loaded) -> torch.Tensor:
        size = loaded.input_size
        return torch.zeros(1, 3, loaded.clip_length or 16, size, size)

    def cam_layer(self, ctx) -> VideoLayer:
        """The CAM layer (``cam.layer`` checked, or the last spatio-temporal child before the pooling)."""
        return ctx.once("video_layer", lambda: video_cam_layer(ctx.model, self.example_input(ctx.loaded),
                                                               ctx.cam.layer))

    def cam_layer_name(self, loaded, layer: str | None = None) -> str | None:
        return video_cam_layer(loaded.model, self.example_input(loaded), layer).name

    def prepare_cams(self, ctx) -> None:
        from ..engine.cam import single_pass_methods
        from ..engine.classes import resolve_target

        methods = single_pass_methods(ctx.cam.methods or self.default_cam or "gradcam", self.name)
        layer = self.cam_layer(ctx)
        categories = ctx.loaded.categories
        ctx.state["cam_methods"] = methods
        ctx.state["targets"] = [resolve_target(t, categories, len(categories)) for t in ctx.cam.targets] \
            if ctx.cam.targets else None
        ctx.keep(layer.name)
        if any(CAM_METHODS[m].uses_gradients for m in methods):
            ctx.gradient_layer = layer.name
        ctx.explain = True
        ctx.info["cam methods"] = ", ".join(methods)
        ctx.info["cam layer"] = f"{layer.name} ({layer.layout})"

    def forward(self, ctx):
        from ..engine.forward import run_forward

        return run_forward(ctx.model, ctx.batch.tensor, capture=ctx.capture, grad_layer=ctx.gradient_layer)

    def predictions(self, ctx) -> list:
        topk = ctx.state.get("prediction_topk") or max(ctx.cam.topk, 5)
        return clip_predictions(ctx.forward.logits, ctx.batch.names, ctx.loaded.categories, topk)

    def feature_maps(self, ctx) -> list:
        shape, last = ctx.batch.tensor.shape, _channels_last(ctx.model)
        found = {name: ctx.forward.activations[name] for name in ctx.state["feature_capture"]}
        return feature_records(found, ctx.batch.names, ctx.features.layers, ctx.features.max_channels,
                               lambda a: _middle_frames(a, shape, last))

    def cam_results(self, ctx) -> list:
        from ..engine.classes import top_classes

        classes = top_classes(ctx.forward, ctx.cam.topk, ctx.state["targets"])  # the classes asked for, or the top-k
        return clip_cams(ctx.forward, ctx.batch, ctx.state["cam_methods"], self.cam_layer(ctx),
                         ClassScore.per_image(classes), ctx.loaded.categories, colormap=ctx.cam.colormap)

    def feature_layer_names(self, loaded) -> list[str]:
        from ..engine.forward import run_forward

        example = self.example_input(loaded)
        capture = stage_children(loaded.model, trunk_root(loaded.model, ROOTS["clip"]))
        found = run_forward(loaded.model, example, capture=capture)
        last = _channels_last(loaded.model)
        grids = {name: _middle_frames(a, example.shape, last) for name, a in found.activations.items()}
        return stage_ends({name: tuple(g.shape[2:]) for name, g in grids.items() if g.ndim == 4})

    def run_info(self, ctx) -> dict[str, object]:
        return {"clip length": f"{ctx.loaded.clip_length or 16} frames"}
