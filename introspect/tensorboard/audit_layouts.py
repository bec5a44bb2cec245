"""Records -> tags for the detection and segmentation audits (registered in
:data:`~introspect.tensorboard.layouts.LAYOUTS` beside the classifier audit's; the parts they share, PR curves,
mean CAMs and galleries, keep their own layouts)."""

from __future__ import annotations

import numpy as np

from ..records import DetectionAuditResult, Gallery, MeanCam, PrCurve, SegmentationAuditResult
from .layouts import LAYOUTS, audit_texts, layout_for, register_layout
from .writer import RunWriter

__all__: list[str] = []


def _headline(writer: RunWriter, result, step: int) -> dict[str, float]:
    headline = {tag: float(value) for tag, value in result.headline().items() if np.isfinite(value)}
    for tag, value in headline.items():
        writer.scalar(tag, value, step)
    return headline


@register_layout(DetectionAuditResult, tags=(
        "audit/map/map", "audit/map/ap50", "audit/map/ap75", "audit/map/ap_small", "audit/map/ap_medium",
        "audit/map/ap_large", "audit/map/ar100", "audit/pointing/<method>", "audit/energy_in_box/<method>",
        "audit/protocol", "audit/per_class", "audit/skipped", "audit/galleries", "hparams",
        *(p for t in (PrCurve, Gallery) for p in LAYOUTS[t].tags)))
def _detection_audit(writer: RunWriter, result: DetectionAuditResult, step: int = 0) -> None:
    """A detection audit: COCO mAP and where the detector looked (SCALARS), per-class AP (TEXT), PR curves per
    class, galleries of missed objects and confident false positives (IMAGES), settings in HPARAMS."""
    headline = _headline(writer, result, step)
    audit_texts(writer, result, step)
    for part in (*result.pr_curves, *result.galleries):
        layout_for(part).write(writer, part, step)
    if result.galleries:
        writer.text("audit/galleries", result.galleries_markdown(), step)
    writer.hparams(result.settings, headline)


@register_layout(SegmentationAuditResult, tags=(
        "audit/miou", "audit/pixel_accuracy", "audit/iou/<class>", "audit/protocol", "audit/per_class",
        "audit/skipped", "audit/confusion_matrix", "audit/galleries", "hparams",
        *(p for t in (MeanCam, Gallery) for p in LAYOUTS[t].tags)))
def _segmentation_audit(writer: RunWriter, result: SegmentationAuditResult, step: int = 0) -> None:
    """A segmentation audit: mIoU, pixel accuracy and per-class IoU (SCALARS, TEXT), the confusion matrix, per-class
    mean CAMs and the worst images (IMAGES), settings in HPARAMS."""
    headline = _headline(writer, result, step)
    audit_texts(writer, result, step)
    if result.confusion_image is not None:
        writer.image("audit/confusion_matrix", result.confusion_image, step)
    for part in (*result.mean_cams, *result.galleries):
        layout_for(part).write(writer, part, step)
    if result.galleries:
        writer.text("audit/galleries", result.galleries_markdown(), step)
    writer.hparams(result.settings, {tag: v for tag, v in headline.items() if not tag.startswith("audit/iou/")})
