"""The whole run: every requested section of one model and its images, into one TensorBoard run.

Everything that can fail on the user's input (model, weights, layers, methods,
images, targets, log dir) is checked before the first summary is written. Images
go through the model in small batches; each batch is one forward pass that serves
predictions, feature maps and every single-pass CAM method.
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

from .analyzers.cam import CAM_METHODS, cams_from_pass, parse_cam_methods
from .analyzers.compare import compare_cams
from .analyzers.features import feature_layer_choices, feature_maps_from_pass
from .analyzers.kernels import kernel_grids
from .analyzers.parameters import parameter_summary
from .analyzers.predictions import predictions_from_pass, resolve_target, top_classes
from .analyzers.embeddings import embeddings
from .analyzers.filters import visualize_filters
from .analyzers.saliency import parse_saliency_methods, saliency_from_batch
from .analyzers.structure import summarize
from .analyzers.quality import cam_quality
from .errors import UsageError
from .forward import run_forward
from .inputs import InputBatch, prepare_inputs
from .layers import pick_cam_layer, resolve_layers
from .models import LoadedModel, load_model
from .records import CamQuality

__all__ = ["SECTIONS", "DEFAULT_SECTIONS", "parse_sections", "RunSummary", "report"]

DEFAULT_SECTIONS = ("structure", "graph", "kernels", "features", "cam", "histograms")
SECTIONS = DEFAULT_SECTIONS + ("saliency", "filters", "embeddings", "quality")  # slower ones: only on request
IMAGE_SECTIONS = {"features", "cam", "saliency", "embeddings", "quality"}
BATCH_SIZE = 8


def parse_sections(spec: str | Sequence[str] | None) -> list[str]:
    """``"structure,cam"`` or ``"all"`` -> section names; an unknown one lists the valid ones."""
    if spec is None:
        return list(DEFAULT_SECTIONS)
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if "all" in items:
        return list(SECTIONS)
    unknown = [s for s in items if s not in SECTIONS]
    if unknown or not items:
        raise UsageError(f"unknown section {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(SECTIONS)} or all")
    return [s for s in SECTIONS if s in items]


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


def report(
    model: str | nn.Module | LoadedModel,
    images: Sequence[str | Path] | str | Path | None = None,
    logdir: str | Path = "runs",
    run_name: str | None = None,
    sections: str | Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    cam_methods: str | Sequence[str] = "gradcam",
    cam_layer: str | None = None,
    topk: int = 3,
    targets: Sequence[int | str] | None = None,
    weights: str | None = "auto",
    device: str | None = "cpu",
    input_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    saliency_methods: str | Sequence[str] = "vanilla,guided,guidedgradcam",
    filter_layers: Sequence[str] | None = None,
    filter_count: int = 8,
    filter_steps: int = 64,
    filter_size: int | None = None,
    filter_budget: float | None = 60.0,
) -> RunSummary:
    """Write the whole report of ``model`` (and ``images``) into a new run under ``logdir``."""
    from .reporter import Reporter, new_run_dir

    started = time.perf_counter()
    say = progress or (lambda message: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = parse_sections(sections)
        if topk < 1:
            raise UsageError(f"--topk {topk} asks for no classes: give 1 or more (default 3)")
        uses_cams = "cam" in chosen or "quality" in chosen  # quality scores the run's CAM maps
        methods = parse_cam_methods(cam_methods) if uses_cams else []
        loaded = model if isinstance(model, LoadedModel) else load_model(model, weights, device, input_size)
        module = loaded.model
        feature_choices = feature_layer_choices(module, layers, input_size=loaded.input_size) if "features" in chosen else []
        cam_choice = pick_cam_layer(module, cam_layer, input_size=loaded.input_size) if uses_cams else None
        saliency_names = parse_saliency_methods(saliency_methods) if "saliency" in chosen else []
        saliency_layer = (cam_choice or pick_cam_layer(module, cam_layer, input_size=loaded.input_size)) if "guidedgradcam" in saliency_names \
            else None
        if "filters" in chosen and filter_layers:
            resolve_layers(module, filter_layers)
        image_list = [images] if isinstance(images, (str, Path)) else list(images or [])
        # Embeddings stream the images themselves: load them all up front only for the per-image sections.
        per_image = bool(set(chosen) & (IMAGE_SECTIONS - {"embeddings"})) or "embeddings" not in chosen
        batch = prepare_inputs(image_list, loaded) if image_list and per_image else None
        if image_list and batch is None:
            from .images import find_images

            find_images(image_list)  # a missing path fails now, before anything is written
        classes = len(loaded.categories)
        target_indices = [resolve_target(t, loaded.categories, classes) for t in targets] if targets else None
        if not image_list:
            missing = IMAGE_SECTIONS.intersection(chosen)
            if missing and sections is not None:
                raise UsageError(f"sections {', '.join(sorted(missing))} need an image: add --image PATH")
        run_dir = new_run_dir(logdir, run_name, loaded.name)

        summary = RunSummary(run_dir=run_dir, sections=chosen, tags={})
        info: dict[str, object] = {
            "model": loaded.name,
            "weights": loaded.weights,
            "weights from": loaded.weights_source,
            "images": ", ".join(str(p) for p in image_list) or "none",
            "input size": loaded.input_size,
            "device": str(loaded.device),
            "sections": ", ".join(chosen),
            "cam methods": ", ".join(methods) or "-",
            "cam layer": cam_choice.name if cam_choice else "-",
            "versions": _versions(),
            "command": " ".join(sys.argv),
        }
        qualities: list[CamQuality] = []  # one per chunk of images
        status = "failed"
        reporter = Reporter(run_dir)
        try:
            if "structure" in chosen:
                say("structure")
                reporter.structure(summarize(loaded))
            if "graph" in chosen:
                say("graph")
                example = batch.tensor[:1] if batch is not None else torch.zeros(1, 3, loaded.input_size,
                                                                                  loaded.input_size)
                reporter.graph(module, example.to(loaded.device))
            if "kernels" in chosen:
                say("kernels")
                reporter.kernels(kernel_grids(loaded, layers=None))
            if "histograms" in chosen:
                say("histograms")
                reporter.parameters(parameter_summary(loaded))
            if "filters" in chosen:
                say("filters (activation maximisation)")
                reporter.filters(visualize_filters(loaded, filter_layers, filter_count, filter_steps, filter_size,
                                                   filter_budget))
            if batch is not None and set(chosen) & (IMAGE_SECTIONS - {"embeddings"}):  # inputs, predictions too
                capture = [c.name for c in feature_choices] + ([cam_choice.name] if cam_choice else [])
                needs_grad = any(CAM_METHODS[m].single_pass and CAM_METHODS[m].uses_gradients for m in methods)
                for chunk in _chunks(batch, BATCH_SIZE):
                    say(f"images {', '.join(chunk.names)}")
                    forward = run_forward(module, chunk.tensor, capture=capture,
                                          grad_layer=cam_choice.name if needs_grad and cam_choice else None)
                    for name, photo in zip(chunk.names, chunk.photos):
                        reporter.input_image(name, photo)
                    for preds in predictions_from_pass(forward, chunk.names, loaded.categories, max(topk, 5)):
                        reporter.predictions(preds)
                        summary.predictions.append(preds)
                    if feature_choices:
                        reporter.features(feature_maps_from_pass(forward, chunk, feature_choices))
                    if cam_choice is not None:
                        picked = top_classes(forward, topk, target_indices)
                        cam_results = cams_from_pass(module, forward, chunk, methods, cam_choice, picked,
                                                     loaded.categories)
                        if "cam" in chosen:
                            reporter.cams(cam_results)
                            if len(methods) > 1:
                                reporter.cam_comparisons(compare_cams(cam_results, chunk))
                        if "quality" in chosen:  # this chunk's maps, scored now: only the numbers are kept
                            say(f"quality of {sum(len(r.maps) for r in cam_results)} CAM maps")
                            qualities.append(cam_quality(module, chunk, cam_results))
                    if saliency_names:
                        picked = top_classes(forward, 1, target_indices)
                        reporter.saliency(saliency_from_batch(module, chunk, saliency_names, picked,
                                                              loaded.categories, saliency_layer,
                                                              forward.probabilities))
                    forward.release()
            if qualities:
                reporter.quality(CamQuality.concat(qualities))
            if "embeddings" in chosen and image_list:
                say("embeddings")
                reporter.embedding(embeddings(loaded, image_list, batch_size=BATCH_SIZE))
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted (Ctrl-C)"
            raise
        except Exception as exc:
            status = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            summary.warnings = list(dict.fromkeys(str(w.message) for w in caught))
            summary.seconds = time.perf_counter() - started
            info["status"] = f"{status} in {summary.seconds:.1f} s"
            try:
                reporter.run_info(info, summary.warnings)
            finally:
                reporter.close()
            summary.tags = dict(reporter.tags)
    return summary
