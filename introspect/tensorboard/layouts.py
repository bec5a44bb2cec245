"""Records -> tags: one layout per record type, in one registry that the report, the audit and watch share.

A layout maps a ready record onto :class:`~introspect.tensorboard.writer.RunWriter`'s primitives;
it draws and computes nothing (the records carry their pictures, tables and numbers). Each
entry of :data:`LAYOUTS` says which tags it writes (``Layout.tags``, patterns such as
``cam/<method>/<image>``), so the tag scheme can be read in one place::

    for layout in LAYOUTS.values():
        print(layout.record.__name__, layout.tags)

:func:`write_record` writes any record through its layout and flushes, so an event file left
by a killed run holds every record written before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArgumentTypeError
from ..records import (
    AuditResult,
    AuditSample,
    CamComparison,
    CamQuality,
    CamResult,
    Detections,
    EmbeddingSet,
    FeatureMap,
    FeatureStats,
    FilterGrid,
    FlowResult,
    Gallery,
    InputImage,
    KernelGrid,
    MeanCam,
    ParameterSummary,
    Predictions,
    PrCurve,
    RunInfo,
    SaliencyResult,
    SanityCheck,
    Segmentation,
    StructureSummary,
    TrainingStats,
)
from .writer import RunWriter

__all__ = ["Layout", "LAYOUTS", "register_layout", "layout_for", "write_record", "write_records", "tag_part",
           "audit_hparams", "whole"]


@dataclass(frozen=True)
class Layout:
    """How records of one type become TensorBoard tags.

    Attributes:
        record: the record type.
        tags: the tag patterns written, ``<field>`` standing for a part taken from the record.
        write: ``write(writer, record, step, **options)``; it does not flush (:func:`write_records` does).
    """

    record: type
    tags: tuple[str, ...]
    write: Callable[..., None]

    @property
    def summary(self) -> str:
        """The first line of the layout's docstring."""
        return (self.write.__doc__ or "").strip().split("\n", 1)[0]

    def matches(self, tag: str) -> bool:
        """Whether ``tag`` is one of this layout's patterns filled in."""
        return any(re.fullmatch(_pattern(p), tag) for p in self.tags)


def _pattern(tag_pattern: str) -> str:
    """A tag pattern as a regular expression: each ``<field>`` is one or more characters, the rest literal."""
    return "".join(".+" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", tag_pattern))


LAYOUTS: dict[type, Layout] = {}
"""Every record type that can be written, with its layout (see :class:`Layout`)."""


def register_layout(*records: type, tags: tuple[str, ...]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: ``write(writer, record, step=0, **options)`` is the layout of ``records`` (one or more types).

    ``write`` maps a ready record onto the writer's primitives and does not flush; ``tags`` are the
    patterns it writes (``<field>`` for a part taken from the record). A type registered again is
    replaced. Example::

        @register_layout(LogitNorms, tags=("logits/norm/<image>",))
        def _logit_norms(writer, record, step=0):  # its docstring's first line is Layout.summary
            for name, value in zip(record.names, record.norms):
                writer.scalar(f"logits/norm/{name}", value, step)
    """

    def register(write: Callable[..., None]) -> Callable[..., None]:
        for record in records:
            LAYOUTS[record] = Layout(record=record, tags=tags, write=write)
        return write

    return register


def layout_for(record: object) -> Layout:
    """The layout of ``record``'s type (or of its nearest registered base class).

    Raises:
        ArgumentTypeError: nothing in :data:`LAYOUTS` writes this type.
    """
    for cls in type(record).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    known = ", ".join(sorted(t.__name__ for t in LAYOUTS))
    raise ArgumentTypeError(f"record is a {type(record).__name__}, which has no TensorBoard layout: give one of "
                            f"{known}", parameter="record")


def write_records(writer: RunWriter, records: Iterable[object], step: int = 0, **options: Any) -> None:
    """Write each record through its layout, then flush once. ``options`` go to each layout (e.g. ``fps``)."""
    for record in records:
        layout_for(record).write(writer, record, step, **options)
    writer.flush()


def write_record(writer: RunWriter, record: object, step: int = 0, **options: Any) -> None:
    """Write one record through its layout and flush."""
    write_records(writer, (record,), step, **options)


def tag_part(name: str) -> str:
    """A name made safe for one tag segment (no slash, no spaces)."""
    return "_".join(str(name).replace("/", " ").split()) or "-"


# -- the run and the model ------------------------------------------------------------------


@register_layout(RunInfo, tags=("run/info",))
def _run_info(writer: RunWriter, info: RunInfo, step: int = 0) -> None:
    """The run's key/value card, warnings first in bold (TEXT)."""
    writer.text("run/info", info.to_markdown(), step)


@register_layout(InputImage, tags=("input/<image>",))
def _input_image(writer: RunWriter, record: InputImage, step: int = 0) -> None:
    """The input as the model saw it (IMAGES)."""
    writer.image(f"input/{record.name}", record.image, step)


@register_layout(StructureSummary, tags=("structure/summary",))
def _structure(writer: RunWriter, summary: StructureSummary, step: int = 0) -> None:
    """The layer table (TEXT)."""
    writer.text("structure/summary", summary.to_markdown(), step)


@register_layout(KernelGrid, tags=("kernels/<layer>",))
def _kernels(writer: RunWriter, grid: KernelGrid, step: int = 0) -> None:
    """One conv layer's weights as tiles (IMAGES)."""
    writer.image(f"kernels/{grid.layer}", grid.image, step)


@register_layout(FeatureMap, tags=("features/<layer>/<image>",))
def _feature_map(writer: RunWriter, fmap: FeatureMap, step: int = 0) -> None:
    """The top channels of one layer for one input (IMAGES)."""
    writer.image(f"features/{fmap.layer}/{fmap.image_name}", fmap.image, step)


@register_layout(FeatureStats, tags=("features/stats/<image>",))
def _feature_stats(writer: RunWriter, stats: FeatureStats, step: int = 0) -> None:
    """Per layer: shape, mean, std, fraction of zeros, for one input (TEXT)."""
    writer.text(f"features/stats/{stats.image_name}", stats.to_markdown(), step)


@register_layout(ParameterSummary, tags=("parameters/<name>", "gradients/<name>"))
def _parameters(writer: RunWriter, summary: ParameterSummary, step: int = 0) -> None:
    """One histogram per parameter tensor, and per gradient where one exists (HISTOGRAMS)."""
    for tensor in summary.tensors:
        writer.histogram(f"parameters/{tensor.name}", tensor.histogram, step)
        if tensor.grad is not None:
            writer.histogram(f"gradients/{tensor.name}", tensor.grad, step)


@register_layout(TrainingStats, tags=(
    "weights/<param>", "gradients/<param>", "train/grad_norm", "train/grad_norm/<param>", "train/update_ratio",
    "train/update_ratio/<param>", "train/lr", "activations/<layer>/mean", "activations/<layer>/std",
    "activations/<layer>/zero_fraction", "cam/probe/<i>", "train/probe_true_class_probability"))
def _training(writer: RunWriter, stats: TrainingStats, step: int = 0) -> None:
    """One logging step of a training run: histograms, norms, ratios, learning rate, activations, probe CAMs."""
    for name, histogram in stats.weights:
        writer.histogram(f"weights/{name}", histogram, step)
    for name, histogram in stats.gradients:
        writer.histogram(f"gradients/{name}", histogram, step)
    if stats.grad_norm is not None:
        writer.scalar("train/grad_norm", stats.grad_norm, step)
    for name, value in stats.grad_norms:
        writer.scalar(f"train/grad_norm/{name}", value, step)
    if stats.update_ratio is not None:
        writer.scalar("train/update_ratio", stats.update_ratio, step)
    for name, value in stats.update_ratios:
        writer.scalar(f"train/update_ratio/{name}", value, step)
    if stats.lr is not None:
        writer.scalar("train/lr", stats.lr, step)
    for activity in stats.activations:
        writer.scalar(f"activations/{activity.layer}/mean", activity.mean, step)
        writer.scalar(f"activations/{activity.layer}/std", activity.std, step)
        writer.scalar(f"activations/{activity.layer}/zero_fraction", activity.zero_fraction, step)
    for i, image in enumerate(stats.probe_images):
        writer.image(f"cam/probe/{i}", image, step)
    if stats.probe_probability is not None:
        writer.scalar("train/probe_true_class_probability", stats.probe_probability, step)


# -- predictions and explanations ----------------------------------------------------------------


@register_layout(Predictions, tags=("predictions/<image>",))
def _predictions(writer: RunWriter, preds: Predictions, step: int = 0) -> None:
    """The top-k table (TEXT)."""
    writer.text(f"predictions/{preds.image_name}", preds.to_markdown(), step)


@register_layout(CamResult, tags=("cam/<method>/<image>", "cam/<method>/<clip>/video"))
def _cam(writer: RunWriter, result: CamResult, step: int = 0, fps: int = 4) -> None:
    """The labelled panel of every explained class, box, mask class or clip class (IMAGES; a clip's: its strip of
    frames), and a clip's first map over every frame as an animated GIF where the writer can encode video."""
    writer.image(f"cam/{result.method}/{result.image_name}", result.image, step)
    frames = result.maps[0].frames if result.maps else None
    if frames is not None:
        writer.video(f"cam/{result.method}/{result.image_name}/video", frames, fps, step)


@register_layout(CamComparison, tags=("cam/compare/<image>",))
def _cam_comparison(writer: RunWriter, comparison: CamComparison, step: int = 0) -> None:
    """The photo and every method's overlay, side by side (IMAGES)."""
    writer.image(f"cam/compare/{comparison.image_name}", comparison.image, step)


@register_layout(SaliencyResult, tags=("saliency/<method>/<image>",))
def _saliency(writer: RunWriter, result: SaliencyResult, step: int = 0) -> None:
    """The labelled panel of every class (IMAGES)."""
    writer.image(f"saliency/{result.method}/{result.image_name}", result.image, step)


@register_layout(FilterGrid, tags=("filters/<layer>",))
def _filters(writer: RunWriter, grid: FilterGrid, step: int = 0) -> None:
    """The synthesised inputs of one layer, labelled with their filter index (IMAGES)."""
    writer.image(f"filters/{grid.layer}", grid.image, step)


@register_layout(EmbeddingSet, tags=("embeddings/<layer>",))
def _embedding(writer: RunWriter, embedding: EmbeddingSet, step: int = 0, tag: str | None = None) -> None:
    """The features with thumbnails and metadata (PROJECTOR); ``tag`` replaces the default."""
    writer.projector(tag or f"embeddings/{embedding.layer.split()[0]}", embedding.features, embedding.metadata(),
                     embedding.METADATA_HEADER, embedding.thumbnails)


@register_layout(CamQuality, tags=("quality/<method>/keep<percent>", "quality/<method>/remove<percent>",
                                    "quality/<method>/score", "quality/summary"))
def _quality(writer: RunWriter, quality: CamQuality, step: int = 0) -> None:
    """Per CAM method, averaged over images and classes: keep / remove / score (SCALARS), and the table (TEXT)."""
    percent = f"{quality.percent:g}"
    for row in quality.by_method():
        writer.scalar(f"quality/{row.method}/keep{percent}", row.keep, step)
        writer.scalar(f"quality/{row.method}/remove{percent}", row.remove, step)
        writer.scalar(f"quality/{row.method}/score", row.score, step)
    writer.text("quality/summary", quality.to_markdown(), step)


# -- the other tasks -------------------------------------------------------------------------


@register_layout(Detections, tags=("detections/<image>", "detections/<image>/table"))
def _detections(writer: RunWriter, detections: Detections, step: int = 0) -> None:
    """The boxes drawn (IMAGES), and the table (TEXT)."""
    writer.image(f"detections/{detections.image_name}", detections.image, step)
    writer.text(f"detections/{detections.image_name}/table", detections.to_markdown(), step)


@register_layout(Segmentation, tags=("segmentation/<image>", "segmentation/<image>/table"))
def _segmentation(writer: RunWriter, result: Segmentation, step: int = 0) -> None:
    """The mask over the photo with its legend (IMAGES), and the class shares (TEXT)."""
    writer.image(f"segmentation/{result.image_name}", result.image, step)
    writer.text(f"segmentation/{result.image_name}/table", result.to_markdown(), step)


@register_layout(FlowResult, tags=("flow/<pair>", "flow/<pair>/table"))
def _flow(writer: RunWriter, result: FlowResult, step: int = 0) -> None:
    """Both frames and the flow image (IMAGES), and the magnitudes (TEXT)."""
    writer.image(f"flow/{result.pair_name}", result.image, step)
    writer.text(f"flow/{result.pair_name}/table", result.to_markdown(), step)


# -- the dataset audit --------------------------------------------------------------------------


@register_layout(PrCurve, tags=("audit/pr/<class>",))
def _pr_curve(writer: RunWriter, curve: PrCurve, step: int = 0) -> None:
    """One class's precision-recall curve (PR CURVES)."""
    writer.pr_curve(f"audit/pr/{tag_part(curve.class_name)}", curve.tp, curve.fp, curve.tn, curve.fn,
                    curve.precision, curve.recall, step)


@register_layout(MeanCam, tags=("audit/mean_cam/<class>",))
def _mean_cam(writer: RunWriter, mean_cam: MeanCam, step: int = 0) -> None:
    """A class's mean image and each method's mean map (IMAGES)."""
    writer.image(f"audit/mean_cam/{tag_part(mean_cam.class_name)}", mean_cam.image, step)


@register_layout(Gallery, tags=("audit/<gallery>",))
def _gallery(writer: RunWriter, gallery: Gallery, step: int = 0) -> None:
    """A gallery's grid (IMAGES), e.g. ``audit/worst_confident_wrong``."""
    writer.image(f"audit/{gallery.name}", gallery.image, step)


@register_layout(SanityCheck, tags=("audit/sanity", "audit/sanity/<method>"))
def _sanity(writer: RunWriter, sanity: SanityCheck, step: int = 0) -> None:
    """The randomisation check's table (TEXT), and each method's correlation after the last step (SCALARS)."""
    writer.text("audit/sanity", sanity.to_markdown(), step)
    for method, row in zip(sanity.methods, sanity.correlations):
        writer.scalar(f"audit/sanity/{method}", float(row[-1]), step)


@register_layout(AuditSample, tags=("audit/projector",))
def _audit_sample(writer: RunWriter, sample: AuditSample, step: int = 0) -> None:
    """The sample's features, thumbnails and label / predicted / correct (PROJECTOR)."""
    writer.projector("audit/projector", sample.features, sample.metadata(), sample.METADATA_HEADER,
                     sample.thumbnails)



def audit_texts(writer: RunWriter, result: Any, step: int = 0) -> None:
    """The texts every audit writes: how it was measured, the per-class table, and the files it could not read."""
    writer.text("audit/protocol", result.protocol, step)
    if result.classes:
        writer.text("audit/per_class", result.per_class_markdown(), step)
    if result.skipped:
        writer.text("audit/skipped", result.skipped_markdown(), step)


@register_layout(AuditResult, tags=("audit/accuracy/top1", "audit/accuracy/top5", "audit/pointing/<method>",
                                     "audit/pointing/centre_baseline", "audit/energy_in_box/<method>", "audit/protocol",
                                     "audit/per_class", "audit/skipped", "audit/confusion_matrix", "audit/galleries",
                                     "hparams", *(p for t in (PrCurve, MeanCam, Gallery, SanityCheck, AuditSample)
                                                  for p in LAYOUTS[t].tags)))
def _audit(writer: RunWriter, result: AuditResult, step: int = 0) -> None:
    """Everything an audit found, under ``audit/`` (see the README's tag table), and its settings with the
    headline figures in HPARAMS."""
    headline = {tag: value for tag, value in result.headline().items() if np.isfinite(value)}
    for tag, value in headline.items():
        writer.scalar(tag, value, step)
    audit_texts(writer, result, step)
    if result.confusion_image is not None:
        writer.image("audit/confusion_matrix", result.confusion_image, step)
    for part in (*result.pr_curves, *result.mean_cams, *result.galleries):
        layout_for(part).write(writer, part, step)
    if result.galleries:
        writer.text("audit/galleries", result.galleries_markdown(), step)
    if result.sanity is not None:
        layout_for(result.sanity).write(writer, result.sanity, step)
    if result.sample is not None and len(result.sample):
        layout_for(result.sample).write(writer, result.sample, step)
    writer.hparams(*audit_hparams(result.settings, headline))


# HPARAMS shows the first five settings by name, capitals before small letters: these come first.
_HEADLINE_SETTINGS = {"model": "Model", "weights": "Weights", "methods": "CAM methods", "layer": "CAM layer",
                      "dataset": "Dataset"}


def whole(value: object) -> object:
    """A whole number as an int (``224.0`` -> ``224``); anything else as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def audit_hparams(settings: dict, headline: dict[str, float]) -> tuple[dict[str, object], dict[str, float]]:
    """An audit's settings and figures as HPARAMS shows them best: the model, weights, CAM methods, CAM layer
    and dataset first (the five it ticks at first, by name), every number that is whole as text without
    decimals (HPARAMS prints numbers as ``224.00``), and as metrics the accuracy and pointing figures
    (the first five ticked, by tag: top-1, top-5, then pointing)."""
    named = {_HEADLINE_SETTINGS.get(key, key.replace("_", " ")): whole(value) for key, value in settings.items()}
    shown = {key: str(value) if isinstance(value, int) and not isinstance(value, bool) else value
             for key, value in named.items()}
    metrics = {tag: value for tag, value in headline.items() if not tag.startswith("audit/energy_in_box/")}
    return shown, metrics
