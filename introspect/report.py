"""The whole run: every requested section of one model and its images, into one TensorBoard run.

:func:`report` walks the section registry (:mod:`introspect.sections`). Everything
that can fail on the user's input (model, weights, layers, methods, images,
targets, log dir) is checked before the first summary is written: each section's
``prepare`` runs first. Images then go through the model in small batches; each
batch is one forward pass that every ``batch`` section shares.
"""

from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .forward import run_forward
from .inputs import InputBatch, prepare_inputs
from .models import LoadedModel, load_model
from .options import BATCH_SIZE, DEFAULT_LOGDIR, CamOptions, FeatureOptions, FilterOptions, LoadOptions, \
    SaliencyOptions
from .sections import SECTIONS, RunContext, Section, parse_sections

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


def _versions() -> str:
    import torchvision

    return f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}"


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
        cam, features, saliency, filters: each section's options.
        progress: called with a short line as each step starts (the CLI prints them).

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

        summary = RunSummary(run_dir=run_dir, sections=chosen_names, tags={})
        info: dict[str, object] = {
            "model": loaded.name,
            "weights": loaded.weights,
            "weights from": loaded.weights_source,
            "images": ", ".join(str(p) for p in image_list) or "none",
            "input size": loaded.input_size,
            "device": str(loaded.device),
            "sections": ", ".join(chosen_names),
            **ctx.info,
            "versions": _versions(),
            "command": " ".join(sys.argv),
        }
        status = "failed"
        ctx.reporter = Reporter(run_dir)
        try:
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
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted (Ctrl-C)"
            raise
        except Exception as exc:
            status = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            summary.predictions = ctx.predictions
            summary.warnings = list(dict.fromkeys(str(w.message) for w in caught))
            summary.seconds = time.perf_counter() - started
            info["status"] = f"{status} in {summary.seconds:.1f} s"
            try:
                ctx.reporter.run_info(info, summary.warnings)
            finally:
                ctx.reporter.close()
            summary.tags = dict(ctx.reporter.tags)
    return summary
