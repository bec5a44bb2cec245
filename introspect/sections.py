"""The section registry: what a report can hold, each entry describing itself.

A :class:`Section` says its name, what it needs (images, the shared forward pass,
gradients), whether it is slow (then it runs only when asked for), at which stage
of the run it works, and the functions that turn the run's shared state
(:class:`RunContext`) into records handed to the reporter. :func:`introspect.report`
walks the registry; the CLI's ``--sections`` choices and help come from it.

Stages, in the order a run goes through them:

- ``model``: once, from the model alone (structure, graph, kernels, ...);
- ``batch``: once per batch of images, after the one forward pass that every
  ``batch`` section shares (features, CAM, saliency, ...);
- ``images``: once, after the batches, for sections that stream the images
  themselves (embeddings).

Adding a section is one analyzer and one :func:`register_section` call (plus a
reporter writer if it brings a new kind of record)::

    def list_inputs(ctx):
        ctx.reporter.text("inputs/names", ", ".join(ctx.batch.names))

    register_section(Section("inputs", "the names of each batch's inputs", stage="batch", run=list_inputs))

A section runs for every task that gives what it ``requires`` (a classifier, a detector, a
segmenter, a video model...); the others skip it and ``run/info`` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .context import RunContext
from .errors import ArgumentError, UsageError
from .tasks.base import NEEDS

__all__ = [
    "Section",
    "RunContext",
    "SECTIONS",
    "register_section",
    "default_sections",
    "selectable_sections",
    "parse_sections",
    "write_record",
    "write_cams",
]

Stage = Literal["model", "batch", "images"]
Step = Callable[["RunContext"], None]


@dataclass(frozen=True)
class Section:
    """One part of a report.

    Args:
        name: what ``--sections`` / ``sections=`` call it; also the first segment of its tags.
        summary: one line for ``--help``.
        stage: ``model`` (once, model only), ``batch`` (per batch, after the shared forward
            pass) or ``images`` (once, streams the images itself).
        run: writes the section: called once (``model``, ``images``) or once per batch.
        prepare: checks the section's options and declares what the shared forward pass
            must capture, before anything is written (a bad option fails the run early).
        finish: called once after every batch (to write what was accumulated).
        needs_images: the section has nothing to show without images.
        needs_gradients: the section takes gradients (of the shared pass or its own).
        slow: not in the default set; runs when named or with ``all``.
        always: runs with every ``batch`` stage (the input photos and predictions) and is
            not a ``--sections`` choice.
        requires: what the model's task must give (keys of ``introspect.tasks.base.CAPABILITIES``:
            ``images``, ``class_scores``, ``targets``, ``autograd``, ``graph``); a task that lacks one
            skips the section and ``run/info`` says why. Empty: every task runs it.
    """

    name: str
    summary: str
    stage: Stage
    run: Step
    prepare: Step | None = None
    finish: Step | None = None
    needs_images: bool = False
    needs_gradients: bool = False
    slow: bool = False
    always: bool = False
    requires: frozenset[str] = frozenset()

    @property
    def needs_forward(self) -> bool:
        """Whether the section uses the forward pass shared by every ``batch`` section."""
        return self.stage == "batch"


SECTIONS: dict[str, Section] = {}


def register_section(section: Section) -> Section:
    """Add ``section`` to the registry (replacing one of the same name); returns it.

    Raises:
        ArgumentError: ``section`` is not a :class:`Section`, or its stage is unknown.
    """
    if not isinstance(section, Section):
        raise ArgumentError(f"section={section!r} is not an introspect.sections.Section", parameter="section")
    if section.stage not in ("model", "batch", "images"):
        raise ArgumentError(f"section stage={section.stage!r}: use model, batch or images", parameter="stage")
    SECTIONS[section.name] = section
    return section


def selectable_sections() -> list[str]:
    """Every section a user can ask for, in the order a run writes them."""
    return [s.name for s in _ordered() if not s.always]


def default_sections() -> list[str]:
    """The sections a run writes when none are named (the fast ones)."""
    return [s.name for s in _ordered() if not s.always and not s.slow]


def _ordered() -> list[Section]:
    stages = {"model": 0, "batch": 1, "images": 2}
    return sorted(SECTIONS.values(), key=lambda s: stages[s.stage])  # stable: registry order within a stage


def parse_sections(spec: str | Sequence[str] | None) -> list[str]:
    """``"structure,cam"`` or ``"all"`` -> section names in run order; None gives the defaults.

    Raises:
        UsageError: an unknown section name (the message lists the valid ones), or none given.
    """
    if spec is None:
        return default_sections()
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    valid = selectable_sections()
    if "all" in items:
        return valid
    unknown = [s for s in items if s not in valid]
    if unknown or not items:
        raise UsageError(f"unknown section {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(valid)} or all", parameter="sections")
    return [s for s in valid if s in items]


# -- the built-in sections -----------------------------------------------------------------


def _structure(ctx: RunContext) -> None:
    from .analyzers.structure import summarize

    ctx.reporter.structure(summarize(ctx.loaded))


def _graph(ctx: RunContext) -> None:
    example = ctx.state.get("example_input")
    if example is None:
        example = ctx.task.example_input(ctx.loaded)
    ctx.reporter.graph(ctx.model, example.to(ctx.loaded.device))


def _kernels(ctx: RunContext) -> None:
    from .analyzers.kernels import conv_weight, kernel_grids, kernel_layers

    names = kernel_layers(ctx.model)
    pointwise = [name for name in names if tuple(conv_weight(ctx.model.get_submodule(name)).shape[2:]) in
                 ((1, 1), (1, 1, 1))]
    if pointwise and len(pointwise) < len(names):  # a 1x1 kernel is one number per filter and channel: no picture
        names = [name for name in names if name not in set(pointwise)]
        ctx.info["kernels skipped"] = (f"{len(pointwise)} 1x1 convs ({', '.join(pointwise[:3])}"
                                       f"{', ...' if len(pointwise) > 3 else ''}): one weight per filter and channel, "
                                       "no picture to see; their weights are in parameters/<name> (HISTOGRAMS)")
    ctx.reporter.kernels(kernel_grids(ctx.loaded, layers=names))


def _histograms(ctx: RunContext) -> None:
    from .analyzers.parameters import parameter_summary

    ctx.reporter.parameters(parameter_summary(ctx.loaded))


def _prepare_filters(ctx: RunContext) -> None:
    from .layers import resolve_layers

    if ctx.filters.layers:
        resolve_layers(ctx.model, ctx.filters.layers)


def _filters(ctx: RunContext) -> None:
    from .analyzers.filters import visualize_filters

    options = ctx.filters
    ctx.say("filters (activation maximisation)")
    ctx.reporter.filters(visualize_filters(ctx.loaded, options.layers, options.count, options.steps, options.size,
                                           options.budget_s))


def _inputs_and_predictions(ctx: RunContext) -> None:
    for name, picture in ctx.task.shown_inputs(ctx.batch):
        ctx.reporter.input_image(name, picture)
    for record in ctx.batch_predictions():
        write_record(ctx.reporter, record)
        ctx.predictions.append(record)


def _prepare_features(ctx: RunContext) -> None:
    ctx.task.prepare_features(ctx)


def _features(ctx: RunContext) -> None:
    ctx.reporter.features(ctx.task.feature_maps(ctx))


def _prepare_cams(ctx: RunContext) -> None:
    """The CAM methods, layer and targets, checked by the task; the shared pass keeps what they need."""
    ctx.task.prepare_cams(ctx)


def _cams(ctx: RunContext) -> None:
    from .analyzers.compare import compare_cams

    results = ctx.cam_results()
    write_cams(ctx, results)
    if len({r.method for r in results}) > 1:
        ctx.reporter.cam_comparisons(compare_cams(results, ctx.batch))


def write_cams(ctx: RunContext, results: Sequence) -> None:
    """Write CAM results of any task (``cam/<method>/<input>``; a clip's also as a video where it can, which
    ``run/info`` says)."""
    ctx.info.update(ctx.reporter.cams([r for r in results if r.maps]))


def write_record(reporter, record) -> None:
    """Write one prediction record (classes, detections, mask, flow) under its own tags: its layout in
    :data:`introspect.tensorboard.LAYOUTS`."""
    reporter.record(record)


def _quality(ctx: RunContext) -> None:
    """Score this batch's CAM maps now; only the numbers are kept until :func:`_write_quality`."""
    from .analyzers.quality import cam_quality

    results = ctx.cam_results()
    ctx.say(f"quality of {sum(len(r.maps) for r in results)} CAM maps")
    ctx.state.setdefault("quality", []).append(cam_quality(ctx.model, ctx.batch, results))


def _write_quality(ctx: RunContext) -> None:
    from .records import CamQuality

    parts = ctx.state.get("quality")
    if parts:
        ctx.reporter.quality(CamQuality.concat(parts))


def _prepare_saliency(ctx: RunContext) -> None:
    from .analyzers.saliency import parse_saliency_methods

    names = parse_saliency_methods(ctx.saliency.methods)
    ctx.state["saliency_methods"] = names
    ctx.task.target_indices(ctx)  # checked before anything is written
    if "guidedgradcam" in names:
        ctx.task.cam_layer(ctx)  # picked (and checked) now


def _saliency(ctx: RunContext) -> None:
    from .analyzers.saliency import saliency_from_pass

    names = ctx.state["saliency_methods"]
    layer = ctx.task.cam_layer(ctx) if "guidedgradcam" in names else None
    picked = ctx.task.classes(ctx, ctx.saliency.topk)
    ctx.reporter.saliency(saliency_from_pass(ctx.model, ctx.batch, names, picked, ctx.loaded.categories, layer,
                                              ctx.forward.probabilities))


def _embeddings(ctx: RunContext) -> None:
    from .analyzers.embeddings import embeddings
    from .options import BATCH_SIZE

    ctx.say("embeddings")
    ctx.reporter.embedding(embeddings(ctx.loaded, ctx.images, batch_size=BATCH_SIZE))


for _section in (
    Section("structure", "the torchinfo layer table: shapes, parameters, mult-adds", "model", _structure),
    Section("graph", "the traced model (GRAPHS tab)", "model", _graph, requires=NEEDS["graph"]),
    Section("kernels", "conv weights as image grids", "model", _kernels),
    Section("histograms", "one histogram per parameter tensor", "model", _histograms),
    Section("filters", "activation maximisation of the first filters of some layers", "model", _filters,
            prepare=_prepare_filters, needs_gradients=True, slow=True, requires=NEEDS["filters"]),
    Section("predictions", "the inputs as the model saw them, and what it predicts", "batch",
            _inputs_and_predictions, needs_images=True, always=True),
    Section("features", "the most active channels of each stage's output", "batch", _features,
            prepare=_prepare_features, needs_images=True),
    Section("cam", "class activation maps over the photo for the top-k classes (boxes, mask classes)", "batch",
            _cams, prepare=_prepare_cams, needs_images=True, needs_gradients=True,
            requires=NEEDS["cam"]),
    Section("saliency", "input gradients: vanilla, guided backprop, guided Grad-CAM", "batch", _saliency,
            prepare=_prepare_saliency, needs_images=True, needs_gradients=True, slow=True,
            requires=NEEDS["saliency"]),
    Section("embeddings", "penultimate features of every image in the PROJECTOR", "images", _embeddings,
            needs_images=True, slow=True, requires=NEEDS["embeddings"]),
    Section("quality", "ROAD scores of the CAM maps (keep / remove their top 20%)", "batch", _quality,
            prepare=_prepare_cams, finish=_write_quality, needs_images=True, needs_gradients=True, slow=True,
            requires=NEEDS["quality"]),
):
    register_section(_section)
