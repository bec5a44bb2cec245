"""The report of a detection, segmentation, video or optical-flow model: the sections that apply to its task,
each written through the :class:`~introspect.reporter.Reporter`.

Classifiers (float and quantized) go through :func:`introspect.report.report`'s own path;
this module runs the other tasks with one forward pass per batch serving predictions,
feature maps and (for video) the CAMs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..analyzers.features import feature_map
from ..analyzers.kernels import kernel_grids
from ..analyzers.parameters import parameter_summary
from ..analyzers.structure import summarize
from ..errors import TargetError
from ..layers import LayerChoice
from ..models import LoadedModel
from ..options import BATCH_SIZE, DetectionOptions
from .common import run_model

__all__ = ["TaskRun", "run_task", "prepare_task_inputs", "task_layers", "TASK_RUNNERS", "feature_root"]



@dataclass
class TaskRun:
    """What a task's report needs: the model, the inputs, the options and where to write."""

    loaded: LoadedModel
    images: list[str | Path]
    reporter: object  # introspect.reporter.Reporter
    sections: list[str]
    methods: list[str] = field(default_factory=list)
    cam_layer: str | None = None
    layers: Sequence[str] | None = None
    topk: int = 3
    targets: list[int] | None = None
    threshold: float = DetectionOptions.score_threshold
    say: Callable[[str], None] = lambda message: None
    info: dict[str, object] = field(default_factory=dict)
    predictions: list = field(default_factory=list)
    prepared: object = None  # the inputs, from prepare_task_inputs (read before anything is written)


def prepare_task_inputs(loaded: LoadedModel, images: Sequence[str | Path]) -> object:
    """Read and preprocess the inputs of a task's run, so bad input fails before a run is written.

    Returns an :class:`~introspect.inputs.InputBatch` (detection, segmentation), a
    :class:`~introspect.tasks.video.ClipBatch` (video), :class:`~introspect.tasks.flow.FramePairs`
    (optical flow), or None without images.
    """
    if loaded.task == "optical_flow":
        from .flow import prepare_pairs

        return prepare_pairs(images, loaded)
    if not images:
        return None
    if loaded.task == "video":
        from .video import prepare_clips

        return prepare_clips(images, loaded)
    from ..inputs import prepare_inputs

    return prepare_inputs(images, loaded)


def feature_root(model: nn.Module, task: str) -> str:
    """The container whose children are the feature stages: a detector's or segmenter's backbone body,
    RAFT's feature encoder, a video model's trunk."""
    names = {name for name, _ in model.named_modules()}
    if task == "optical_flow":
        return "feature_encoder"
    if task == "video":
        return next((n for n in ("features", "blocks") if n in names), "")
    return next((n for n in ("backbone.body", "backbone.features", "backbone") if n in names), "")


def _children(model: nn.Module, root: str) -> list[str]:
    """The children of ``root`` that may end a stage (pooling layers, a video model's global pool, are left out)."""
    container = model.get_submodule(root) if root else model
    return [f"{root}.{name}" if root else name for name, child in container.named_children()
            if "pool" not in type(child).__name__.lower()]


def _stage_ends(shapes: dict[str, tuple[int, ...]], limit: int = 6) -> list[str]:
    names = list(shapes)
    ends = [n for n, after in zip(names, names[1:] + [None]) if after is None or shapes[after] != shapes[n]]
    return ends[-limit:]


def _static_sections(run: TaskRun, example_shape: tuple[int, ...], num_inputs: int = 1) -> None:
    loaded, reporter = run.loaded, run.reporter
    if "structure" in run.sections:
        run.say("structure")
        reporter.structure(summarize(loaded, input_size=example_shape, num_inputs=num_inputs,
                                     on_meta=loaded.task != "detection"))
    if "kernels" in run.sections:
        run.say("kernels")
        reporter.kernels(kernel_grids(loaded))
    if "histograms" in run.sections:
        run.say("histograms")
        reporter.parameters(parameter_summary(loaded))


def _feature_records(run: TaskRun, activations: dict[str, torch.Tensor], names: Sequence[str],
                     as_map: Callable[[torch.Tensor], torch.Tensor] = lambda a: a) -> list:
    """Feature-map records of the stage ends among ``activations`` (each turned (N, C, H, W) by ``as_map``)."""
    maps = {layer: as_map(a) for layer, a in activations.items()}
    maps = {layer: m for layer, m in maps.items() if m.ndim == 4}
    chosen = list(run.layers) if run.layers else _stage_ends({k: tuple(v.shape[2:]) for k, v in maps.items()})
    return [feature_map(LayerChoice(layer), name, maps[layer][n]) for n, name in enumerate(names)
            for layer in chosen if layer in maps]


def _capture(run: TaskRun, root: str) -> list[str]:
    if "features" not in run.sections:
        return []
    return list(run.layers) if run.layers else _children(run.loaded.model, root)


def _chunks(count: int, size: int = BATCH_SIZE):
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


def _write_task_cams(run: TaskRun, results: Sequence) -> None:
    """``cam/<method>/<image>`` panels of detection / segmentation CAM results, their notes as warnings."""
    import warnings

    from ..errors import IntrospectWarning

    run.reporter.cams([r for r in results if r.maps])
    for result in results:
        run.info.setdefault("cam layer", result.layer + (f" ({', '.join(result.levels)})" if any(result.levels)
                                                          else ""))
        for note in result.warnings:
            warnings.warn(f"{result.method} {result.image_name}: {note}", IntrospectWarning, stacklevel=2)


def _per_image(results: Sequence, count: int) -> list:
    """The first method's result of each image (CAM results come method-major)."""
    return list(results[:count])


def run_detection(run: TaskRun) -> None:
    """Detections drawn with their table, a CAM per top detection (:mod:`introspect.tasks.detection`), backbone
    feature maps, structure, kernels, histograms."""
    from ..inputs import InputBatch, prepare_inputs
    from .detection import detect, detection_cams

    loaded, module = run.loaded, run.loaded.model
    _static_sections(run, (1, 3, loaded.input_size, loaded.input_size))
    if not run.images:
        return
    batch = run.prepared if run.prepared is not None else prepare_inputs(run.images, loaded)
    root = feature_root(module, "detection")
    for part in _chunks(len(batch)):
        chunk = InputBatch(batch.tensor[part], batch.photos[part], batch.names[part])
        run.say(f"images {', '.join(chunk.names)}")
        for name, photo in zip(chunk.names, chunk.photos):
            run.reporter.input_image(name, photo)
        if "cam" in run.sections:  # one pass: the detections and a CAM per top detection (box score by IoU)
            results = detection_cams(module, chunk.tensor, methods=run.methods, topk=run.topk, layer=run.cam_layer,
                                     targets=run.targets, score_threshold=run.threshold,
                                     categories=loaded.categories, names=chunk.names)
            found = [r.detections for r in _per_image(results, len(chunk))]
        else:
            results = []
            found = detect(module, chunk.tensor, score_threshold=run.threshold, categories=loaded.categories,
                           names=chunk.names)
        for record in found:
            run.reporter.detections(record)
            run.predictions.append(record)
        _write_task_cams(run, results)
        capture = _capture(run, root)
        if capture:
            raw = run_model(module, chunk.tensor, capture=capture)
            run.reporter.features(_feature_records(run, raw.activations, chunk.names))


def run_segmentation(run: TaskRun) -> None:
    """The mask over each photo with its legend and table, a CAM per class present
    (:mod:`introspect.tasks.segmentation`), backbone feature maps, structure, kernels, histograms."""
    from ..inputs import InputBatch, prepare_inputs
    from .segmentation import segment, segmentation_cams

    loaded, module = run.loaded, run.loaded.model
    if run.targets:
        raise TargetError(f"{loaded.name} explains every class present in the mask: drop targets=")
    _static_sections(run, (1, 3, loaded.input_size, loaded.input_size))
    if not run.images:
        return
    batch = run.prepared if run.prepared is not None else prepare_inputs(run.images, loaded)
    root = feature_root(module, "segmentation")
    for part in _chunks(len(batch)):
        chunk = InputBatch(batch.tensor[part], batch.photos[part], batch.names[part])
        run.say(f"images {', '.join(chunk.names)}")
        for name, photo in zip(chunk.names, chunk.photos):
            run.reporter.input_image(name, photo)
        if "cam" in run.sections:  # one pass: the mask and a CAM per class present (logit summed over its pixels)
            results = segmentation_cams(module, chunk, methods=run.methods, layer=run.cam_layer,
                                        max_classes=run.topk, categories=loaded.categories)
            found = [r.segmentation for r in _per_image(results, len(chunk))]
        else:
            results = []
            found = segment(module, chunk, categories=loaded.categories)
        for record in found:
            run.reporter.segmentation(record)
            run.predictions.append(record)
        _write_task_cams(run, results)
        capture = _capture(run, root)
        if capture:
            raw = run_model(module, chunk.tensor, capture=capture)
            run.reporter.features(_feature_records(run, raw.activations, chunk.names))


def run_video(run: TaskRun) -> None:
    """Kinetics top-k per clip, CAMs over time, the middle frame's feature maps, structure, kernels, histograms."""
    from ..analyzers.cam import CAM_METHODS
    from ..forward import run_forward
    from .video import clip_cams, clip_predictions, prepare_clips, to_ncthw, video_cam_layer

    loaded, module = run.loaded, run.loaded.model
    length = loaded.clip_length or 16
    _static_sections(run, (1, 3, length, loaded.input_size, loaded.input_size))
    if not run.images:
        return
    clips = run.prepared if run.prepared is not None else prepare_clips(run.images, loaded)
    root = feature_root(module, "video")
    channels_last = hasattr(module, "patch_embed")  # Swin3D lays out (N, T, H, W, C)
    layer = video_cam_layer(module, clips.tensor[:1], run.cam_layer) if "cam" in run.sections else None
    if layer is not None:
        run.info["cam layer"] = f"{layer.name} ({layer.layout})"
    needs_grad = layer is not None and any(CAM_METHODS[m].uses_gradients for m in run.methods)

    def as_map(activation: torch.Tensor) -> torch.Tensor:  # the middle frame, (N, C, H, W)
        if activation.ndim == 3:
            grid = to_ncthw(activation, "tokens", clips.tensor.shape)
        elif activation.ndim == 5:
            grid = to_ncthw(activation, "nthwc" if channels_last else "ncthw", clips.tensor.shape)
        else:
            return activation
        return grid[:, :, grid.shape[2] // 2]

    encoded = False
    for part in _chunks(len(clips)):
        tensor = clips.tensor[part]
        names = clips.names[part]
        run.say(f"clips {', '.join(names)}")
        feature_names = _capture(run, root)
        capture = feature_names + ([layer.name] if layer is not None else [])
        forward = run_forward(module, tensor, capture=list(dict.fromkeys(capture)),
                              grad_layer=layer.name if needs_grad else None)
        for n, name in enumerate(names):
            run.reporter.input_image(name, clips.frames[part][n][len(clips.frames[part][n]) // 2])
        for preds in clip_predictions(forward.logits, names, loaded.categories, max(run.topk, 5)):
            run.reporter.predictions(preds)
            run.predictions.append(preds)
        if "features" in run.sections:
            feats = {k: forward.activations[k] for k in feature_names}
            run.reporter.features(_feature_records(run, feats, names, as_map))
        if layer is not None:
            if run.targets:
                classes = torch.tensor(run.targets, dtype=torch.long).expand(len(names), -1).clone()
            else:
                classes = forward.logits.topk(min(run.topk, forward.logits.shape[-1]), dim=-1).indices
            from .video import ClipBatch

            part_clips = ClipBatch(tensor, clips.frames[part], names, clips.static[part])
            encoded = run.reporter.clip_cams(clip_cams(forward, part_clips, run.methods, layer, classes,
                                                       loaded.categories))
        forward.release()
    if layer is not None:
        run.info["cam videos"] = "written: cam/<method>/<clip>/video, an animated GIF (IMAGES tab)" if encoded else \
            "not written: TensorBoard's video encoder needs moviepy 1.x (pip install 'moviepy<2'); the IMAGES " \
            "strips show the frames"


def run_flow(run: TaskRun) -> None:
    """The flow image of each frame pair, the feature encoder's maps of the first frame, structure, kernels,
    histograms."""
    from .flow import prepare_pairs, flow_results

    loaded, module = run.loaded, run.loaded.model
    if run.targets:
        raise TargetError(f"{loaded.name} estimates optical flow and has no classes: drop targets=")
    pairs = run.prepared if run.prepared is not None else prepare_pairs(run.images, loaded)
    _static_sections(run, (1, 3, loaded.input_size, loaded.input_size), num_inputs=2)
    root = feature_root(module, "optical_flow")
    for part in _chunks(len(pairs)):
        names = pairs.names[part]
        run.say(f"frame pairs {', '.join(names)}")
        raw = run_model(module, (pairs.first[part], pairs.second[part]), capture=_capture(run, root))
        flows = raw.output[-1] if isinstance(raw.output, (list, tuple)) else raw.output
        for record in flow_results(flows, type(pairs)(pairs.first[part], pairs.second[part], pairs.photos[part],
                                                        names)):
            run.reporter.flow(record)
            run.predictions.append(record)
        if raw.activations:  # the encoder ran on both frames at once: keep the first frame's maps
            first = {k: v[: len(names)] for k, v in raw.activations.items()}
            run.reporter.features(_feature_records(run, first, names))


TASK_RUNNERS: dict[str, Callable[[TaskRun], None]] = {
    "detection": run_detection,
    "segmentation": run_segmentation,
    "video": run_video,
    "optical_flow": run_flow,
}


def task_layers(loaded: LoadedModel) -> tuple[set[str], str | None]:
    """The default feature layers and CAM layer (None where the task has no CAM) of a detection, segmentation,
    video or optical-flow model, found by running a blank input of its size once.

    Returns:
        (feature layer names, CAM layer name or None).
    """
    module, size = loaded.model, loaded.input_size
    if loaded.task == "video":
        example: object = torch.zeros(1, 3, loaded.clip_length or 16, size, size)
    elif loaded.task == "optical_flow":
        example = (torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size))
    else:
        example = torch.zeros(1, 3, size, size)
    root = feature_root(module, loaded.task)
    raw = run_model(module, example, capture=_children(module, root))
    if loaded.task == "video":
        from .video import to_ncthw, video_cam_layer

        channels_last = hasattr(module, "patch_embed")
        grids = {}
        for name, a in raw.activations.items():
            if a.ndim in (3, 5):
                grids[name] = to_ncthw(a, "tokens" if a.ndim == 3 else ("nthwc" if channels_last else "ncthw"),
                                       example.shape)
        features = set(_stage_ends({k: tuple(v.shape[2:]) for k, v in grids.items()}))
        return features, video_cam_layer(module, example).name
    shapes = {k: tuple(v.shape[2:]) for k, v in raw.activations.items() if v.ndim == 4}
    return set(_stage_ends(shapes)), None


def run_task(run: TaskRun) -> None:
    """Write the report of ``run.loaded`` (a detection, segmentation, video or optical-flow model)."""
    TASK_RUNNERS[run.loaded.task](run)
