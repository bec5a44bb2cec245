"""Frozen dataclasses that analyzers, tasks and the audit return, and that the TensorBoard layouts write.

One module per domain, every name re-exported here (``from introspect.records import CamResult``):

- :mod:`~introspect.records.base`: the image mixin, PNG, the one Markdown / HTML table helper;
- :mod:`~introspect.records.run`: the run's info card and its inputs as the model saw them;
- :mod:`~introspect.records.model`: layer table, kernels, feature maps, parameters and histograms, training stats;
- :mod:`~introspect.records.explain`: CAM (one record for every task), saliency, filters, comparisons, quality,
  pointing, embeddings;
- :mod:`~introspect.records.tasks`: predictions, detections, segmentation, optical flow;
- :mod:`~introspect.records.audit`: the dataset audit.

Records import nothing above them (no analyzer, task or model code): numbers and arrays in, Markdown and
pictures out.
"""

from __future__ import annotations

from .audit import AuditResult, AuditSample, ClassAudit, Gallery, GalleryItem, MeanCam, PrCurve, SanityCheck
from .base import ImageRecord, heatmap_peak, html_table, markdown_cell, markdown_table, png_bytes
from .explain import (
    SUBJECT_KINDS,
    CamComparison,
    CamMap,
    CamQuality,
    CamResult,
    EmbeddingSet,
    FilterGrid,
    MethodQuality,
    PointingGame,
    SaliencyMap,
    SaliencyResult,
    Subject,
)
from .model import (
    FeatureMap,
    FeatureStats,
    Histogram,
    KernelGrid,
    LayerActivity,
    LayerRow,
    ParameterSummary,
    ParameterTensor,
    StructureSummary,
    TrainingStats,
)
from .run import InputImage, RunInfo
from .tasks import (
    Detections,
    FlowResult,
    Predictions,
    Segmentation,
    SegmentClass,
)

__all__ = [
    # base
    "ImageRecord",
    "heatmap_peak",
    "html_table",
    "markdown_cell",
    "markdown_table",
    "png_bytes",
    # run
    "RunInfo",
    "InputImage",
    # model
    "LayerRow",
    "StructureSummary",
    "KernelGrid",
    "FeatureMap",
    "FeatureStats",
    "Histogram",
    "ParameterTensor",
    "ParameterSummary",
    "LayerActivity",
    "TrainingStats",
    # explain
    "SUBJECT_KINDS",
    "Subject",
    "CamMap",
    "CamResult",
    "SaliencyMap",
    "SaliencyResult",
    "FilterGrid",
    "EmbeddingSet",
    "CamComparison",
    "MethodQuality",
    "CamQuality",
    "PointingGame",
    # tasks
    "Predictions",
    "Detections",
    "SegmentClass",
    "Segmentation",
    "FlowResult",
    # audit
    "ClassAudit",
    "GalleryItem",
    "Gallery",
    "MeanCam",
    "AuditSample",
    "SanityCheck",
    "PrCurve",
    "AuditResult",
]
