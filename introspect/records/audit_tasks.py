"""Records of the detection and segmentation audits (:mod:`introspect.audit.detection`,
:mod:`introspect.audit.segmentation`): per-class figures and the whole result of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .audit import Gallery, MeanCam, PrCurve
from .base import markdown_cell, markdown_table

__all__ = ["ClassDetectionAudit", "DetectionAuditResult", "ClassSegmentationAudit", "SegmentationAuditResult"]


def _share(part: int, total: int) -> str:
    return f"{part / total:.1%}" if total else "-"


def _number(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _skipped(skipped: int, files: tuple[str, ...]) -> str:
    shown = "\n".join(f"- {markdown_cell(f)}" for f in files)
    return f"**{skipped} files could not be decoded and were skipped**; the first ones:\n\n{shown}"


class _GalleryTexts:
    """The texts both task audits give: their galleries' files and their unreadable files. A subclass names what
    its galleries list beside each file (:attr:`gallery_column`)."""

    gallery_column = ""

    def galleries_markdown(self) -> str:
        """Each gallery's images, in its order."""
        parts = []
        for gallery in self.galleries:
            rows = [[file, what] for file, what in self.listed.get(gallery.name, ())]
            parts.append(f"**{gallery.title}**\n\n" + markdown_table(["file", self.gallery_column], rows))
        return "\n\n".join(parts)

    def skipped_markdown(self) -> str:
        """How many files could not be decoded, and the first of them."""
        return _skipped(self.skipped, self.skipped_files)


@dataclass(frozen=True)
class ClassDetectionAudit:
    """One class over a detection audit: its AP, what was found, and where the explained detections looked."""

    index: int
    name: str
    objects: int  # ground-truth boxes
    ap: float  # COCO AP over IoU 0.50:0.95 (NaN without objects)
    ap50: float
    found: int  # objects matched by a detection scoring at least the threshold
    confident: int  # detections scoring at least the threshold
    explained: int  # explained detections that matched an object
    hits: tuple[int, ...]  # per method: pointing hits among them
    energy: tuple[float, ...]  # per method: mean share of the map inside the object's box

    @property
    def recall(self) -> float:
        """Share of the objects found (NaN without objects)."""
        return self.found / self.objects if self.objects else math.nan


@dataclass(frozen=True)
class DetectionAuditResult(_GalleryTexts):
    """What a detection audit found: COCO mAP, per-class AP and recall, where the detector looked, PR curves,
    galleries of missed objects and confident false positives."""

    sample = None  # no projector sample (the classifier audit's AuditResult has one)
    gallery_column = "object / detection"

    settings: dict
    methods: tuple[str, ...]
    images: int
    skipped: int
    skipped_files: tuple[str, ...]
    objects: int  # ground-truth boxes
    detections: int  # detections kept (scoring at least min_score)
    explained: int  # detections with a CAM
    explained_matched: int  # ... that matched an object
    map: float  # COCO AP@[.5:.95]
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar100: float
    classes: tuple[ClassDetectionAudit, ...]
    pointing: dict  # method -> share of explained matched detections whose map's peak is on the object
    energy: dict  # method -> mean share of the map inside the object's box
    pr_curves: tuple[PrCurve, ...]
    galleries: tuple[Gallery, ...]
    listed: dict  # gallery name -> ((file, what), ...) in the gallery's order
    protocol: str
    table: str | None  # the per-detection Parquet file
    seconds: float
    category_names: tuple[str, ...] = field(default=())

    def headline(self) -> dict[str, float]:
        """The figures worth comparing across runs, by TensorBoard tag."""
        out = {"audit/map/map": self.map, "audit/map/ap50": self.ap50, "audit/map/ap75": self.ap75,
               "audit/map/ap_small": self.ap_small, "audit/map/ap_medium": self.ap_medium,
               "audit/map/ap_large": self.ap_large, "audit/map/ar100": self.ar100}
        out.update({f"audit/pointing/{m}": v for m, v in self.pointing.items()})
        out.update({f"audit/energy_in_box/{m}": v for m, v in self.energy.items()})
        return out

    def per_class_markdown(self) -> str:
        """Per class: objects, AP, AP50, recall at the threshold, and where its matched detections looked."""
        header = ["class", "objects", "AP", "AP50", "found", "confident detections", "explained"] + \
            [f"pointing {m}" for m in self.methods] + [f"energy {m}" for m in self.methods]
        rows = []
        for c in sorted(self.classes, key=lambda c: (-c.objects, c.index)):
            rows.append([c.name, c.objects, _number(c.ap), _number(c.ap50), _share(c.found, c.objects), c.confident,
                         c.explained] + [_share(h, c.explained) for h in c.hits] + [_number(e) for e in c.energy])
        return markdown_table(header, rows)


    def summary_lines(self) -> list[str]:
        """A few lines for the console."""
        lines = [f"{self.images} images audited ({self.skipped} unreadable skipped), {self.objects} objects, "
                 f"{self.detections} detections",
                 f"COCO mAP {self.map:.3f}, AP50 {self.ap50:.3f}, AP75 {self.ap75:.3f}"]
        if self.pointing:
            parts = ", ".join(f"{m} {v:.1%} (energy {self.energy[m]:.2f})" for m, v in self.pointing.items())
            lines.append(f"where it looked ({self.explained_matched} explained detections on an object): {parts}")
        return lines


@dataclass(frozen=True)
class ClassSegmentationAudit:
    """One class over a segmentation audit: its pixels, the prediction's, and their IoU."""

    index: int
    name: str
    pixels: int  # ground-truth pixels (ignore left out)
    predicted: int  # pixels predicted as it (on non-ignored pixels)
    intersection: int
    images: int  # images whose ground truth has it

    @property
    def iou(self) -> float:
        """Intersection over union (NaN when neither has a pixel)."""
        union = self.pixels + self.predicted - self.intersection
        return self.intersection / union if union else math.nan


@dataclass(frozen=True)
class SegmentationAuditResult(_GalleryTexts):
    """What a segmentation audit found: mIoU, per-class IoU, pixel accuracy, the confusion matrix, per-class mean
    CAMs, the worst images."""

    sample = None  # no projector sample (the classifier audit's AuditResult has one)
    gallery_column = "IoU"

    settings: dict
    methods: tuple[str, ...]
    images: int
    skipped: int
    skipped_files: tuple[str, ...]
    pixels: int  # labelled pixels (255 = ignore left out)
    pixel_accuracy: float
    mean_iou: float  # mean over the classes with a ground-truth or predicted pixel
    classes: tuple[ClassSegmentationAudit, ...]
    confusion_classes: tuple[int, ...]
    confusion: np.ndarray  # int64 (P, P) pixels: rows ground truth, columns predicted, over confusion_classes
    confusion_image: np.ndarray | None
    mean_cams: tuple[MeanCam, ...]
    galleries: tuple[Gallery, ...]
    listed: dict  # gallery name -> ((file, what), ...)
    protocol: str
    table: str | None  # the per-image Parquet file
    seconds: float
    category_names: tuple[str, ...] = field(default=())

    def headline(self) -> dict[str, float]:
        """The figures worth comparing across runs, by TensorBoard tag."""
        out = {"audit/miou": self.mean_iou, "audit/pixel_accuracy": self.pixel_accuracy}
        out.update({f"audit/iou/{'_'.join(c.name.split())}": c.iou for c in self.classes})
        return out

    def per_class_markdown(self) -> str:
        """Per class, worst IoU first."""
        rows = [[c.name, c.images, c.pixels, c.predicted, _number(c.iou)]
                for c in sorted(self.classes, key=lambda c: (c.iou if not math.isnan(c.iou) else 2.0, c.index))]
        return markdown_table(["class", "images", "pixels", "predicted pixels", "IoU"], rows)


    def summary_lines(self) -> list[str]:
        """A few lines for the console."""
        return [f"{self.images} images audited ({self.skipped} unreadable skipped), {self.pixels} labelled pixels",
                f"mIoU {self.mean_iou:.3f}, pixel accuracy {self.pixel_accuracy:.1%}"]
