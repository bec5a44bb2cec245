"""Records of a dataset audit (:mod:`introspect.audit`): per-class figures, galleries, mean CAMs, the projector
sample, the sanity check, and the whole result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import ImageRecord, Markdown, markdown_cell, markdown_table, markdown_text

__all__ = [
    "ClassAudit",
    "GalleryItem",
    "Gallery",
    "MeanCam",
    "AuditSample",
    "SanityCheck",
    "PrCurve",
    "AuditResult",
]


@dataclass(frozen=True)
class ClassAudit:
    """One class over a dataset: how often it is right, and where its maps point."""

    index: int
    name: str
    images: int  # labelled images of this class
    correct: int  # ... predicted right (top-1)
    boxed: int  # ... with a box inside the model's input
    hits: tuple[int, ...]  # per method: pointing hits among the boxed images
    centre_hits: int  # the centre baseline's hits
    energy: tuple[float, ...]  # per method: mean share of the map inside the boxes

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy on this class (NaN without images)."""
        return self.correct / self.images if self.images else float("nan")


@dataclass(frozen=True)
class GalleryItem(ImageRecord):
    """One image of a gallery: what it is, what the model said, and its photo beside its CAM."""

    index: int
    file: str
    label: int  # -1: none
    label_name: str
    predicted: int
    predicted_name: str
    probability: float
    energy: float  # share of the first method's map inside the boxes (NaN without boxes)
    hit: bool | None
    image: np.ndarray  # uint8: the photo and the first method's overlay, labelled


@dataclass(frozen=True)
class Gallery(ImageRecord):
    """A bounded selection of images (e.g. the most confidently wrong), drawn as one grid."""

    name: str  # tag suffix, named for what it sorts by: "worst_confident_wrong", "lowest_energy_in_box"
    title: str
    items: tuple[GalleryItem, ...]
    image: np.ndarray

    def to_markdown(self) -> str:
        """One row per image, under the title; the energy in box column only where some image has boxes."""
        boxed = any(not math.isnan(i.energy) for i in self.items)
        header = ["file", "label", "predicted", "probability"] + (["energy in box"] if boxed else [])
        rows = [[i.file, i.label_name, i.predicted_name, f"{i.probability:.3f}"] +
                (["-" if math.isnan(i.energy) else f"{i.energy:.3f}"] if boxed else []) for i in self.items]
        note = " Energy in box: the share of the map's sum inside the object's boxes (1 = all of it)." if boxed else ""
        return f"**{markdown_text(self.title)}**{note}\n\n" + markdown_table(header, rows)


@dataclass(frozen=True)
class MeanCam(ImageRecord):
    """A class's mean CAM over its images, per method, beside the class's mean image."""

    class_index: int
    class_name: str
    count: int
    methods: tuple[str, ...]
    maps: np.ndarray  # float32 (methods, S, S), each min-max scaled
    image: np.ndarray  # uint8: mean image, then each method's mean map over it


@dataclass(frozen=True)
class AuditSample:
    """A fixed-size sample of penultimate features with thumbnails, for the projector."""

    layer: str
    features: np.ndarray  # float32 (N, D)
    files: tuple[str, ...]
    labels: tuple[str, ...]
    predicted: tuple[str, ...]
    probabilities: tuple[float, ...]
    correct: tuple[str, ...]  # "correct", "wrong" or "unlabelled"
    thumbnails: np.ndarray  # uint8 (N, t, t, 3)

    METADATA_HEADER = ("file", "label", "predicted", "probability", "correct")

    def metadata(self) -> list[list[str]]:
        """One row per image, in :attr:`METADATA_HEADER` order."""
        return [[f, lab, p, f"{q:.4f}", c] for f, lab, p, q, c in
                zip(self.files, self.labels, self.predicted, self.probabilities, self.correct)]

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class SanityCheck:
    """Model-parameter randomisation test (Adebayo et al. 2018): rank correlation of each method's maps on
    the trained model with those on copies randomised from the head down (cascading)."""

    methods: tuple[str, ...]
    steps: tuple[str, ...]  # the deepest-to-the-input layer group randomised at each step
    correlations: np.ndarray  # float64 (methods, steps): mean Spearman correlation over the sample
    samples: int
    threshold: float  # a method whose correlation after the last step is above this is flagged

    @property
    def flagged(self) -> tuple[str, ...]:
        """Methods whose maps barely change when every weight is random."""
        return tuple(m for m, row in zip(self.methods, self.correlations) if row[-1] > self.threshold)

    def to_markdown(self) -> str:
        """One row per method, one column per randomisation step, then the flag."""
        header = ["method"] + [f"random to {s}" for s in self.steps] + ["flag"]
        rows = [[m] + [f"{c:+.3f}" for c in row] +
                [Markdown("**maps ignore the weights**") if m in self.flagged else "ok"]
                for m, row in zip(self.methods, self.correlations)]
        note = (f"Spearman rank correlation of each method's maps with the trained model's, mean over "
                f"{self.samples} images, as layers are randomised from the head down (cascading). Near 0 is good; "
                f"above {self.threshold:g} after full randomisation flags a method.")
        return note + "\n\n" + markdown_table(header, rows)


@dataclass(frozen=True)
class PrCurve:
    """One class's precision-recall curve: the counts at each score threshold ``i / bins``, ``i = 0 .. bins-1``."""

    class_index: int
    class_name: str
    tp: np.ndarray  # float64 (bins,): images of the class scoring at least the threshold
    fp: np.ndarray  # ... other labelled images scoring at least the threshold
    tn: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


@dataclass(frozen=True)
class AuditResult:
    """What a dataset audit found: accuracy, pointing, per-class figures, and bounded pictures."""

    settings: dict  # model, weights, dataset, methods, layer, ... (strings and numbers)
    methods: tuple[str, ...]
    images: int  # images audited
    skipped: int  # files that could not be decoded
    skipped_files: tuple[str, ...]  # the first few of them
    labelled: int
    top1: float
    top5: float
    boxed: int  # images with at least one box inside the model's input
    tolerance: float
    pointing: dict  # method -> share of boxed images hit
    centre_baseline: float
    energy: dict  # method -> mean share of the map inside the boxes
    classes: tuple[ClassAudit, ...]  # classes with labelled images
    confusion_classes: tuple[int, ...]  # classes present (labelled or predicted)
    confusion: np.ndarray  # int64 (P, P): rows true class, columns predicted, over confusion_classes
    pr_classes: tuple[int, ...]
    pr_positive: np.ndarray  # int64 (P, bins): histogram of p(class) over that class's images
    pr_negative: np.ndarray  # int64 (P, bins): ... over the other labelled images
    pr_curves: tuple[PrCurve, ...]  # one per pr_classes entry
    confusion_image: np.ndarray | None  # uint8: the confusion matrix drawn (None without labelled images)
    mean_cams: tuple[MeanCam, ...]
    galleries: tuple[Gallery, ...]
    sample: AuditSample | None
    sanity: SanityCheck | None
    protocol: str
    table: str | None  # the per-image Parquet file
    seconds: float
    category_names: tuple[str, ...] = ()

    def headline(self) -> dict[str, float]:
        """The figures worth comparing across runs, by TensorBoard tag."""
        out = {"audit/accuracy/top1": self.top1, "audit/accuracy/top5": self.top5}
        if self.boxed:
            out.update({f"audit/pointing/{m}": v for m, v in self.pointing.items()})
            out["audit/pointing/centre_baseline"] = self.centre_baseline
            out.update({f"audit/energy_in_box/{m}": v for m, v in self.energy.items()})
        return out

    def skipped_markdown(self) -> str:
        """How many files could not be decoded, and the first of them."""
        shown = "\n".join(f"- {markdown_cell(f)}" for f in self.skipped_files)
        return f"**{self.skipped} files could not be decoded and were skipped**; the first ones:\n\n{shown}"

    def galleries_markdown(self) -> str:
        """A first line naming every gallery (TensorBoard's text cards are short), then each one's table."""
        listed = "; ".join(f"audit/{g.name} ({len(g.items)} images)" for g in self.galleries)
        return markdown_text(f"Galleries (IMAGES tab): {listed}.") + "\n\n" + \
            "\n\n".join(g.to_markdown() for g in self.galleries)

    def per_class_markdown(self) -> str:
        """Per-class accuracy and (with boxes) pointing, worst accuracy first."""
        header = ["class", "images", "top-1"]
        if self.boxed:
            header += ["boxed"] + [f"pointing {m}" for m in self.methods] + ["centre"] + \
                [f"energy {m}" for m in self.methods]

        def share(hit: int, total: int) -> str:
            return f"{hit / total:.1%}" if total else "-"

        rows = []
        for c in sorted(self.classes, key=lambda c: (c.accuracy, c.index)):
            row: list[object] = [c.name, c.images, share(c.correct, c.images)]
            if self.boxed:
                row += [c.boxed] + [share(h, c.boxed) for h in c.hits] + [share(c.centre_hits, c.boxed)] + \
                    [f"{e:.3f}" if c.boxed else "-" for e in c.energy]
            rows.append(row)
        return markdown_table(header, rows)

    def summary_lines(self) -> list[str]:
        """A few lines for the console."""
        lines = [f"{self.images} images audited ({self.skipped} unreadable skipped), {self.labelled} labelled"]
        if self.labelled:
            lines.append(f"accuracy: top-1 {self.top1:.1%}, top-5 {self.top5:.1%}")
        if self.boxed:
            parts = ", ".join(f"{m} {v:.1%}" for m, v in self.pointing.items())
            lines.append(f"pointing game ({self.boxed} boxed images, {self.tolerance:g} px): {parts}; "
                         f"centre baseline {self.centre_baseline:.1%}")
        if self.sanity is not None:
            after = ", ".join(f"{m} {float(row[-1]):+.2f}" for m, row in zip(self.sanity.methods,
                                                                            self.sanity.correlations))
            verdict = (f"{', '.join(self.sanity.flagged)} barely change with random weights (flagged)"
                       if self.sanity.flagged else f"every method's maps change (none above {self.sanity.threshold:g})")
            lines.append(f"sanity check ({self.sanity.samples} images): rank correlation with the trained maps once "
                         f"every layer is random: {after}; {verdict}")
        return lines
