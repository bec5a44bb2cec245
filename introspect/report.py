"""The whole run: every requested section of one model and its images, into one TensorBoard run.

:func:`report` walks the section registry (:mod:`introspect.sections`). Everything
that can fail on the user's input (model, weights, layers, methods, images,
targets, log dir) is checked before the first summary is written: each section's
``prepare`` runs first. Images then go through the model in small batches; each
batch is one forward pass that every ``batch`` section shares.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .errors import UsageError
from .forward import run_forward
from .inputs import InputBatch, prepare_inputs
from .models import LoadedModel, load_model
from .options import BATCH_SIZE, DEFAULT_LOGDIR, CamOptions, DetectionOptions, FeatureOptions, FilterOptions, \
    LoadOptions, SaliencyOptions
from .run_scope import recorded_run as _recorded
from .sections import SECTIONS, RunContext, Section, parse_sections
from .tasks import TASKS
from .tasks.base import Task
from .tasks.runner import TASK_RUNNERS, TaskRun, prepare_task_inputs, run_task

__all__ = ["RunSummary", "report"]


@dataclass
class RunSummary:
    """What a run wrote, for the CLI's closing lines and for notebooks."""

    run_dir: Path
    sections: list[str]
    tags: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    predictions: list = field(default_factory=list)
    seconds: float = 0.0


def _chunks(batch: InputBatch, size: int):
    for start in range(0, len(batch), size):
        stop = start + size
        yield InputBatch(batch.tensor[start:stop], batch.photos[start:stop], batch.names[start:stop])


def _check_images(chosen: Sequence[Section], image_list: list, explicit: bool) -> None:
    missing = sorted(s.name for s in chosen if s.needs_images and not s.always)
    if not image_list and missing and explicit:
        raise UsageError(f"sections {', '.join(missing)} need an image: pass images=PATH", parameter="images")


def report(
    model: str | nn.Module | LoadedModel,
    images: Sequence[str | Path] | str | Path | None = None,
    *,
    logdir: str | Path = DEFAULT_LOGDIR,
    run_name: str | None = None,
    sections: str | Sequence[str] | None = None,
    load: LoadOptions = LoadOptions(),
    cam: CamOptions = CamOptions(),
    features: FeatureOptions = FeatureOptions(),
    saliency: SaliencyOptions = SaliencyOptions(),
    filters: FilterOptions = FilterOptions(),
    detection: DetectionOptions = DetectionOptions(),
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """Write the report of ``model`` (and ``images``) into a new run directory under ``logdir``.

    Args:
        model: a torchvision model name, an ``nn.Module``, or a :class:`LoadedModel`.
        images: photo files or folders (a path or a list of them).
        logdir: where run directories are made (``LOGDIR/<model>-<time>``, never reused).
        run_name: the run directory's name instead of ``<model>-<time>``.
        sections: section names (a comma string or a list; ``"all"``); default: the fast ones.
        load: how a model given by name is loaded (weights, device, input size).
        cam, features, saliency, filters, detection: each section's options (``detection``: detection models).
        progress: called with a short line as each step starts (the CLI prints them).

    Sections that do not apply to the model's task (``introspect.tasks.TASKS``: detection,
    segmentation, video, optical flow, quantized) are skipped and ``run/info`` says why;
    detection, segmentation, video and optical-flow models go through their task's pipeline
    (:mod:`introspect.tasks.runner`).

    Returns:
        A :class:`RunSummary`: the run directory, the tags written per section, warnings,
        predictions and the time taken.

    Raises:
        UsageError: a bad model, weights, layer, method, image, target or log dir, before
            anything is written.
    """
    from .reporter import Reporter, new_run_dir

    started = time.perf_counter()
    say = progress or (lambda message: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen_names = parse_sections(sections)
        chosen = [SECTIONS[name] for name in chosen_names]
        batch_sections = [s for s in SECTIONS.values() if s.stage == "batch" and (s.always or s.name in chosen_names)]
        loaded = model if isinstance(model, LoadedModel) else load_model(model, load.weights, load.device,
                                                                             load.input_size)
        task = TASKS[loaded.task]
        skipped = {name: task.skip_reason(name) for name in chosen_names if task.skip_reason(name)}
        if skipped:  # sections that do not apply to this model's task: run/info says why
            chosen_names = [name for name in chosen_names if name not in skipped]
            chosen = [SECTIONS[name] for name in chosen_names]
            batch_sections = [s for s in batch_sections if s.always or s.name in chosen_names]
        if task.name in TASK_RUNNERS:  # detection, segmentation, video, optical flow: their own pipeline
            return _task_report(loaded, task, images, logdir=logdir, run_name=run_name, chosen=chosen_names,
                                skipped=skipped, cam=cam, features=features, detection=detection, say=say,
                                started=started, caught=caught)
        image_list = [images] if isinstance(images, (str, Path)) else list(images or [])
        ctx = RunContext(loaded=loaded, sections=chosen_names, images=image_list, cam=cam, features=features,
                         saliency=saliency, filters=filters, say=say)
        for section in dict.fromkeys(s for s in batch_sections + chosen):
            if section.prepare is not None:
                section.prepare(ctx)
        _check_images(chosen, image_list, explicit=sections is not None)
        per_batch = [s for s in batch_sections if not s.always] and image_list
        streaming = any(s.stage == "images" for s in chosen)
        # Sections that stream the images load them themselves: load all up front only for the batch sections.
        batch = prepare_inputs(image_list, loaded) if image_list and (per_batch or not streaming) else None
        if image_list and batch is None:
            from .images import find_images

            find_images(image_list)  # a missing path fails now, before anything is written
        if batch is not None:
            ctx.state["example_input"] = batch.tensor[:1]
        run_dir = new_run_dir(logdir, run_name, loaded.name)

        summary = RunSummary(run_dir=run_dir, sections=chosen_names, tags={}, predictions=ctx.predictions)
        info = {**_base_info(loaded, image_list, chosen_names, task, skipped), **ctx.info}
        ctx.reporter = Reporter(run_dir)
        with _recorded(ctx.reporter, info, summary, caught, started):
            for section in (s for s in chosen if s.stage == "model"):
                say(section.name)
                section.run(ctx)
            if batch is not None and per_batch:
                for chunk in _chunks(batch, BATCH_SIZE):
                    say(f"images {', '.join(chunk.names)}")
                    ctx.start_batch(chunk, run_forward(loaded.model, chunk.tensor, capture=ctx.capture,
                                                       grad_layer=ctx.gradient_layer))
                    try:
                        for section in batch_sections:
                            section.run(ctx)
                    finally:
                        ctx.end_batch()
                for section in batch_sections:
                    if section.finish is not None:
                        section.finish(ctx)
            if image_list:
                for section in (s for s in chosen if s.stage == "images"):
                    section.run(ctx)
    return summary


def _base_info(loaded: LoadedModel, image_list: list, chosen: list[str], task: Task,
               skipped: dict[str, str]) -> dict[str, object]:
    """The first lines of ``run/info``: the model, its weights, the images, the device, the sections."""
    return {
        "model": loaded.name,
        "weights": loaded.weights,
        "weights from": loaded.weights_source,
        "images": ", ".join(str(p) for p in image_list) or "none",
        "input size": loaded.input_size,
        "device": str(loaded.device),
        "sections": ", ".join(chosen),
        **_task_info(task, skipped),
    }


def _task_info(task: Task, skipped: dict[str, str]) -> dict[str, object]:
    """What ``run/info`` says about the model's task and the sections it skips."""
    info: dict[str, object] = {"task": f"{task.name}: {task.summary}"}
    if skipped:
        info["sections skipped"] = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    return info


def _task_report(loaded: LoadedModel, task: Task, images, *, logdir, run_name, chosen: list[str],
                 skipped: dict[str, str], cam: CamOptions, features: FeatureOptions, detection: DetectionOptions,
                 say: Callable[[str], None], started: float, caught: list) -> RunSummary:
    """The run of a detection, segmentation, video or optical-flow model (see :mod:`introspect.tasks.runner`)."""
    from .analyzers.cam import CAM_METHODS, parse_cam_methods
    from .analyzers.predictions import resolve_target
    from .reporter import Reporter, new_run_dir

    image_list = [images] if isinstance(images, (str, Path)) else list(images or [])
    methods = parse_cam_methods(cam.methods or task.default_cam or "gradcam") if "cam" in chosen else []
    multi_pass = [m for m in methods if CAM_METHODS[m].delegated]
    if multi_pass:
        raise UsageError(f"{multi_pass[0]} needs many forward passes and is not offered for {task.name} models: "
                         f"pick one of {', '.join(n for n, m in CAM_METHODS.items() if not m.delegated)}",
                         parameter="methods")
    target_indices = None
    if cam.targets:
        target_indices = [resolve_target(t, loaded.categories, len(loaded.categories)) for t in cam.targets] \
            if loaded.categories else list(cam.targets)
    prepared = prepare_task_inputs(loaded, image_list)  # bad input fails here, before anything is written
    run_dir = new_run_dir(logdir, run_name, loaded.name)
    summary = RunSummary(run_dir=run_dir, sections=chosen, tags={})
    info = {**_base_info(loaded, image_list, chosen, task, skipped), "cam methods": ", ".join(methods) or "-"}
    if loaded.clip_length:
        info["clip length"] = f"{loaded.clip_length} frames"
    if task.name == "detection":
        info["score threshold"] = detection.score_threshold
    reporter = Reporter(run_dir)
    run = TaskRun(loaded=loaded, images=image_list, reporter=reporter, sections=chosen, methods=methods,
                  cam_layer=cam.layer, layers=features.layers, topk=cam.topk, targets=target_indices,
                  threshold=detection.score_threshold, say=say, info=info, prepared=prepared)
    with _recorded(reporter, info, summary, caught, started):
        try:
            run_task(run)
        finally:
            summary.predictions = [p for p in run.predictions if hasattr(p, "probabilities")]
    return summary
