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

from .categories import given_names, name_classes
from .context import RunContext
from .errors import UsageError
from .models import LoadedModel, load_model
from .notices import quiet_library_notices
from .options import BATCH_SIZE, DEFAULT_LOGDIR, CamOptions, DetectionOptions, FeatureOptions, FilterOptions, \
    LoadOptions, SaliencyOptions
from .sections import SECTIONS, Section, parse_sections
from .run_scope import image_files, run_record
from .run_scope import recorded_run as _recorded
from .tasks import TASKS
from .tasks.base import Task

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
    skipped: dict[str, str] = field(default_factory=dict)  # section -> why it was not run


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
        progress: called with a short line as each step starts (the CLI prints them), and first with each warning
            raised while loading (``"WARNING: ..."``).

    Every task (``introspect.tasks.TASKS``: classification, quantized, detection, segmentation,
    video, optical flow) walks the same sections: each batch is one forward pass of the model
    (:meth:`Task.forward`) that every ``batch`` section shares. Sections that need what the
    task cannot give are skipped and ``run/info`` says why.

    Returns:
        A :class:`RunSummary`: the run directory, the tags written per section, warnings,
        predictions and the time taken.

    Raises:
        UsageError: a bad model, weights, layer, method, image, target or log dir, before
            anything is written.
    """
    from .tensorboard import Reporter, new_run_dir

    started = time.perf_counter()
    say = progress or (lambda message: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_notices()
        chosen_names = parse_sections(sections)
        named = [images] if isinstance(images, (str, Path)) else images if isinstance(images, (list, tuple)) else []
        paths = [p for p in named if isinstance(p, (str, Path))]
        if paths:  # the caller's paths are checked before any weights are downloaded
            from .images import expand_paths

            expand_paths(paths)
        loaded = model if isinstance(model, LoadedModel) else load_model(
            model, load.weights, load.device, load.input_size, categories=load.categories, model_args=load.model_args)
        if isinstance(model, LoadedModel) and load.categories is not None:
            loaded = name_classes(loaded, given_names(load.categories))
        task = TASKS[loaded.task]
        skipped = {name: reason for name in chosen_names
                   if (reason := task.skip_reason(name, SECTIONS[name].requires))}
        chosen_names = [name for name in chosen_names if name not in skipped]
        chosen = [SECTIONS[name] for name in chosen_names]
        batch_sections = [s for s in SECTIONS.values() if s.stage == "batch" and (s.always or s.name in chosen_names)]
        image_list = [images] if isinstance(images, (str, Path)) else list(images or [])
        ctx = RunContext(loaded=loaded, task=task, sections=chosen_names, images=image_list, cam=cam, features=features,
                         saliency=saliency, filters=filters, detection=detection, say=say)
        task.check_options(ctx)
        for section in dict.fromkeys(s for s in batch_sections + chosen):
            if section.prepare is not None:
                section.prepare(ctx)
        _check_images(chosen, image_list, explicit=sections is not None)
        if not image_list and any(s.needs_images for s in chosen):
            skipped.update({s.name: "no images given (pass images=PATH)" for s in chosen if s.needs_images})
        per_batch = [s for s in batch_sections if not s.always] and image_list
        streaming = any(s.stage == "images" for s in chosen)
        # Sections that stream the images load them themselves: read all up front only for the batch sections.
        inputs = task.read_inputs(image_list, loaded) if image_list and (per_batch or not streaming) else None
        if image_list and inputs is None:
            from .images import find_images

            find_images(image_list)  # a missing path fails now, before anything is written
        if inputs is not None and hasattr(inputs, "tensor"):
            ctx.state["example_input"] = inputs.tensor[:1]
        run_dir = new_run_dir(logdir, run_name, loaded.name)

        summary = RunSummary(run_dir=run_dir, sections=chosen_names, tags={}, predictions=ctx.predictions,
                             skipped=dict(skipped))
        info = {**_base_info(loaded, image_list, chosen_names, task, skipped), **task.run_info(ctx), **ctx.info}
        ctx.info = info  # sections add their lines as they run
        ctx.reporter = Reporter(run_dir)
        with _recorded(ctx.reporter, info, summary, caught, started, record=_run_record(loaded, info, image_list)):
            for message in dict.fromkeys(str(w.message) for w in caught):  # loading's warnings: said first
                say(f"WARNING: {message}")
            for section in (s for s in chosen if s.stage == "model"):
                say(section.name)
                section.run(ctx)
            if inputs is not None and per_batch:
                for chunk in task.chunks(inputs, BATCH_SIZE):
                    say(f"{task.input_kind}s {', '.join(chunk.names)}")
                    ctx.start_batch(chunk)
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
        "class names": loaded.categories_source or "the model's own",
        "images": ", ".join(str(p) for p in image_list) or "none",
        "input size": loaded.input_size,
        "device": str(loaded.device),
        "sections": ", ".join(chosen),
        **_task_info(task, skipped),
    }


def _run_record(loaded: LoadedModel, info: dict[str, object], image_list: list) -> dict[str, object]:
    """The run's ``introspect.json`` (:func:`~introspect.run_scope.run_record`): the CAM layer and methods
    and each input's photo (its tag name -> absolute path) besides the model's facts."""
    methods = str(info.get("cam methods") or "")
    return run_record("report", loaded, cam_layer=info.get("cam layer"),
                      cam_methods=[m.strip() for m in methods.split(",") if m.strip()],
                      image_files=image_files(image_list))


def _task_info(task: Task, skipped: dict[str, str]) -> dict[str, object]:
    """What ``run/info`` says about the model's task and the sections it skips."""
    info: dict[str, object] = {"task": f"{task.name}: {task.summary}"}
    if skipped:
        info["sections skipped"] = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    return info
