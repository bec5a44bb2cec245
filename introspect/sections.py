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

    def count_channels(ctx):
        ctx.reporter.text("channels/info", str(ctx.forward.logits.shape))

    register_section(Section("channels", "logit shape per batch", stage="batch", run=count_channels))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .errors import ArgumentError, UsageError
from .options import CamOptions, FeatureOptions, FilterOptions, SaliencyOptions

__all__ = [
    "Section",
    "RunContext",
    "SECTIONS",
    "register_section",
    "default_sections",
    "selectable_sections",
    "parse_sections",
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


@dataclass
class RunContext:
    """The state a report's sections share: the model, the options, and the current batch.

    A section reads what it needs and hands records to ``reporter``. Per batch,
    ``forward`` is the one forward pass every ``batch`` section shares; results that
    several sections use (the CAM maps) are computed once per batch, on first use.
    """

    loaded: Any  # LoadedModel
    sections: list[str]
    images: list
    cam: CamOptions = field(default_factory=CamOptions)
    features: FeatureOptions = field(default_factory=FeatureOptions)
    saliency: SaliencyOptions = field(default_factory=SaliencyOptions)
    filters: FilterOptions = field(default_factory=FilterOptions)
    say: Callable[[str], None] = lambda message: None
    reporter: Any = None  # introspect.reporter.Reporter, set once the run directory exists
    info: dict[str, object] = field(default_factory=dict)  # extra lines for run/info
    state: dict[str, Any] = field(default_factory=dict)  # per-section state (choices, accumulations)
    capture: list[str] = field(default_factory=list)  # layers the shared forward pass keeps
    gradient_layer: str | None = None  # the layer whose output gradients the shared pass prepares
    predictions: list = field(default_factory=list)  # every image's Predictions, for the summary
    batch: Any = None  # the current InputBatch
    forward: Any = None  # the current ForwardPass
    _per_batch: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> nn.Module:
        """The module under inspection."""
        return self.loaded.model

    def wants(self, name: str) -> bool:
        """Whether section ``name`` is part of this run."""
        return name in self.sections

    def keep(self, *layers: str) -> None:
        """Ask the shared forward pass to capture these layers' outputs."""
        for layer in layers:
            if layer not in self.capture:
                self.capture.append(layer)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this run; the same value after."""
        if key not in self.state:
            self.state[key] = compute()
        return self.state[key]

    def per_batch(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per batch: results that several sections share (the CAM maps)."""
        if key not in self._per_batch:
            self._per_batch[key] = compute()
        return self._per_batch[key]

    def start_batch(self, batch: Any, forward: Any) -> None:
        """Make ``batch`` and its forward pass current."""
        self.batch, self.forward = batch, forward
        self._per_batch.clear()

    def end_batch(self) -> None:
        """Drop the batch and everything computed from it (memory stays flat over a folder)."""
        if self.forward is not None:
            self.forward.release()
        self.batch = self.forward = None
        self._per_batch.clear()

    # -- shared choices, made once per run -----------------------------------------------

    @property
    def cam_layer(self) -> Any:
        """The CAM target layer (a ``LayerChoice``): ``cam.layer`` checked, or the model's default."""
        from .analyzers.cam import cam_layer_choice

        return self.once("cam_layer", lambda: cam_layer_choice(self.model, self.cam.layer))

    @property
    def cam_methods(self) -> list[str]:
        """The CAM method names of ``cam.methods``, checked."""
        from .analyzers.cam import parse_cam_methods

        return self.once("cam_methods", lambda: parse_cam_methods(self.cam.methods))

    @property
    def target_indices(self) -> list[int] | None:
        """``cam.targets`` as class indices (None: each image's top-k)."""
        from .analyzers.predictions import resolve_target

        categories = self.loaded.categories
        return self.once("targets", lambda: [resolve_target(t, categories, len(categories))
                                             for t in self.cam.targets] if self.cam.targets else None)

    def cam_results(self) -> list:
        """This batch's CAM results for every method (computed once per batch)."""
        from .analyzers.cam import cams_from_pass
        from .analyzers.predictions import top_classes

        def compute() -> list:
            picked = top_classes(self.forward, self.cam.topk, self.target_indices)
            return cams_from_pass(self.model, self.forward, self.batch, self.cam_methods, self.cam_layer, picked,
                                  self.loaded.categories, self.cam.colormap)

        return self.per_batch("cam_results", compute)


# -- the built-in sections -----------------------------------------------------------------


def _structure(ctx: RunContext) -> None:
    from .analyzers.structure import summarize

    ctx.reporter.structure(summarize(ctx.loaded))


def _graph(ctx: RunContext) -> None:
    size = ctx.loaded.input_size
    example = ctx.state.get("example_input")
    if example is None:
        example = torch.zeros(1, 3, size, size)
    ctx.reporter.graph(ctx.model, example.to(ctx.loaded.device))


def _kernels(ctx: RunContext) -> None:
    from .analyzers.kernels import kernel_grids

    ctx.reporter.kernels(kernel_grids(ctx.loaded, layers=None))


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
    from .analyzers.predictions import predictions_from_pass

    for name, photo in zip(ctx.batch.names, ctx.batch.photos):
        ctx.reporter.input_image(name, photo)
    for preds in predictions_from_pass(ctx.forward, ctx.batch.names, ctx.loaded.categories, max(ctx.cam.topk, 5)):
        ctx.reporter.predictions(preds)
        ctx.predictions.append(preds)


def _prepare_features(ctx: RunContext) -> None:
    from .analyzers.features import feature_layer_choices

    choices = feature_layer_choices(ctx.model, ctx.features.layers)
    ctx.state["feature_layers"] = choices
    ctx.keep(*(c.name for c in choices))


def _features(ctx: RunContext) -> None:
    from .analyzers.features import feature_maps_from_pass

    ctx.reporter.features(feature_maps_from_pass(ctx.forward, ctx.batch, ctx.state["feature_layers"],
                                                 ctx.features.max_channels))


def _prepare_cams(ctx: RunContext) -> None:
    """The CAM methods, layer and targets, checked; the shared pass keeps the layer (and its gradient)."""
    from .analyzers.cam import needs_layer_gradient

    layer = ctx.cam_layer
    ctx.target_indices  # noqa: B018 - an unknown target fails now, before anything is written
    ctx.keep(layer.name)
    if needs_layer_gradient(ctx.cam_methods):
        ctx.gradient_layer = layer.name
    ctx.info["cam methods"] = ", ".join(ctx.cam_methods)
    ctx.info["cam layer"] = layer.name


def _cams(ctx: RunContext) -> None:
    from .analyzers.compare import compare_cams

    results = ctx.cam_results()
    ctx.reporter.cams(results)
    if len(ctx.cam_methods) > 1:
        ctx.reporter.cam_comparisons(compare_cams(results, ctx.batch))


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
    ctx.target_indices  # noqa: B018 - checked before anything is written
    if "guidedgradcam" in names:
        ctx.cam_layer  # noqa: B018 - picked (and checked) now


def _saliency(ctx: RunContext) -> None:
    from .analyzers.predictions import top_classes
    from .analyzers.saliency import saliency_from_pass

    names = ctx.state["saliency_methods"]
    layer = ctx.cam_layer if "guidedgradcam" in names else None
    picked = top_classes(ctx.forward, ctx.saliency.topk, ctx.target_indices)
    ctx.reporter.saliency(saliency_from_pass(ctx.model, ctx.batch, names, picked, ctx.loaded.categories, layer,
                                              ctx.forward.probabilities))


def _embeddings(ctx: RunContext) -> None:
    from .analyzers.embeddings import embeddings
    from .options import BATCH_SIZE

    ctx.say("embeddings")
    ctx.reporter.embedding(embeddings(ctx.loaded, ctx.images, batch_size=BATCH_SIZE))


for _section in (
    Section("structure", "the torchinfo layer table: shapes, parameters, mult-adds", "model", _structure),
    Section("graph", "the traced model (GRAPHS tab)", "model", _graph),
    Section("kernels", "conv weights as image grids", "model", _kernels),
    Section("histograms", "one histogram per parameter tensor", "model", _histograms),
    Section("filters", "activation maximisation of the first filters of some layers", "model", _filters,
            prepare=_prepare_filters, needs_gradients=True, slow=True),
    Section("predictions", "the photos as the model saw them, and the top-5 classes", "batch",
            _inputs_and_predictions, needs_images=True, always=True),
    Section("features", "the most active channels of each stage's output", "batch", _features,
            prepare=_prepare_features, needs_images=True),
    Section("cam", "class activation maps over the photo for the top-k classes", "batch", _cams,
            prepare=_prepare_cams, needs_images=True, needs_gradients=True),
    Section("saliency", "input gradients: vanilla, guided backprop, guided Grad-CAM", "batch", _saliency,
            prepare=_prepare_saliency, needs_images=True, needs_gradients=True, slow=True),
    Section("embeddings", "penultimate features of every image in the PROJECTOR", "images", _embeddings,
            needs_images=True, slow=True),
    Section("quality", "ROAD scores of the CAM maps (keep / remove their top 20%)", "batch", _quality,
            prepare=_prepare_cams, finish=_write_quality, needs_images=True, needs_gradients=True, slow=True),
):
    register_section(_section)
