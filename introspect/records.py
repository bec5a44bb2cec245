"""Frozen dataclasses that analyzers return.

Records hold numbers and arrays, never live modules or display strings. Every
image they carry follows one convention: a ``uint8`` numpy array, height x width
x 3 (RGB). Records that hold an image render themselves in Jupyter
(``_repr_png_``) and convert with ``.to_pil()``; tables render as HTML.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ArgumentError
from .geometry import points_in_boxes

__all__ = [
    "markdown_table",
    "LayerRow",
    "StructureSummary",
    "KernelGrid",
    "FeatureMap",
    "Predictions",
    "CamMap",
    "CamResult",
    "Histogram",
    "ParameterTensor",
    "ParameterSummary",
    "SaliencyMap",
    "SaliencyResult",
    "FilterGrid",
    "EmbeddingSet",
    "CamComparison",
    "MethodQuality",
    "CamQuality",
    "PointingGame",
    "FlowResult",
    "ClipCamResult",
    "ClassAudit",
    "GalleryItem",
    "Gallery",
    "MeanCam",
    "AuditSample",
    "SanityCheck",
    "AuditResult",
]


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class _ImageRecord:
    """Mixin: a record whose ``image`` field is a uint8 HWC array."""

    image: np.ndarray

    def to_pil(self):
        """The record's image as a ``PIL.Image``."""
        from PIL import Image

        return Image.fromarray(self.image)

    def _repr_png_(self) -> bytes:
        return _png_bytes(self.image)


def _html_table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (what TensorBoard's TEXT tab renders).

    Args:
        header: the column names.
        rows: one sequence of cells per row; each cell is written with ``str``.

    Returns:
        The table, one line per row, header first.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table."""

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    num_params: int
    trainable_params: int
    mult_adds: int


@dataclass(frozen=True)
class StructureSummary:
    """The layer table of a model (from torchinfo) and its totals."""

    model_name: str
    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    total_mult_adds: int

    _HEADER = ["layer", "type", "output shape", "params", "mult-adds"]

    def _rows(self) -> list[list[object]]:
        return [
            [r.name, r.type, "x".join(map(str, r.output_shape)) or "-", f"{r.num_params:,}", f"{r.mult_adds:,}"]
            for r in self.rows
        ]

    def totals_line(self) -> str:
        """Totals in one line: parameters, trainable parameters, mult-adds."""
        return (
            f"{self.total_params:,} parameters ({self.trainable_params:,} trainable), "
            f"{self.total_mult_adds / 1e9:.3f} G mult-adds for input "
            f"{'x'.join(str(s) for s in self.input_shape)}"
        )

    def to_markdown(self) -> str:
        """The table as Markdown (TensorBoard's TEXT tab renders it)."""
        return f"**{self.model_name}**: {self.totals_line()}\n\n" + markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        totals = f"<p><b>{html.escape(self.model_name)}</b>: {html.escape(self.totals_line())}</p>"
        return totals + _html_table(self._HEADER, self._rows())


@dataclass(frozen=True)
class KernelGrid(_ImageRecord):
    """The weights of one conv layer drawn as a grid of tiles.

    ``mode`` is ``"rgb"`` (one colour tile per filter of a 3-channel first layer),
    ``"channels"`` (one grey tile per filter x input channel, rows are filters) or
    ``"depthwise"`` (one grey tile per channel of a depthwise conv) or ``"pointwise"`` (a 1x1 conv as one
    filters x channels matrix, normalised over the layer).
    """

    layer: str
    weight_shape: tuple[int, ...]
    mode: str
    shown_filters: int
    shown_channels: int
    image: np.ndarray


@dataclass(frozen=True)
class FeatureMap(_ImageRecord):
    """Activations of one layer for one input: the top channels as a grid, and stats."""

    layer: str
    image_name: str
    shape: tuple[int, ...]
    channels: tuple[int, ...]
    channel_means: tuple[float, ...]
    mean: float
    std: float
    zero_fraction: float
    image: np.ndarray


@dataclass(frozen=True)
class Predictions:
    """Top-k classes for one input."""

    image_name: str
    indices: tuple[int, ...]
    names: tuple[str, ...]
    probabilities: tuple[float, ...]

    _HEADER = ["rank", "class", "index", "probability"]

    def headline(self) -> str:
        """One line for the console: the input and its top 3 classes."""
        top = ", ".join(f"{n} {p:.1%}" for n, p in zip(self.names[:3], self.probabilities[:3]))
        return f"{self.image_name}: {top}"

    def _rows(self) -> list[list[object]]:
        ranked = zip(self.indices, self.names, self.probabilities)
        return [[rank, name, index, f"{p:.4f}"] for rank, (index, name, p) in enumerate(ranked, start=1)]

    def to_markdown(self) -> str:
        """The predictions as a Markdown table."""
        return markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        return _html_table(self._HEADER, self._rows())


@dataclass(frozen=True)
class CamMap(_ImageRecord):
    """One class activation map: the normalised heatmap and its overlay on the photo."""

    method: str
    class_index: int
    class_name: str
    probability: float
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], the input's size
    image: np.ndarray  # uint8 (H, W, 3): heatmap drawn over the photo

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heatmap's maximum."""
        row, col = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(row), int(col)


@dataclass(frozen=True)
class CamResult(_ImageRecord):
    """Every requested class map of one method for one input, and a labelled panel."""

    method: str
    layer: str
    image_name: str
    maps: tuple[CamMap, ...]
    image: np.ndarray  # the labelled panel: one overlay per class, side by side
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Histogram:
    """Counts of values in equal-width bins, with the totals TensorBoard stores beside them.

    Bin ``i`` covers ``[edges[i], edges[i + 1])`` (the last bin is closed); ``num``,
    ``sum`` and ``sum_squares`` count the finite values only. Built one tensor at a
    time (``introspect.analyzers.parameters.histogram_of``), so a record never holds
    the values themselves.
    """

    edges: np.ndarray  # float64 (bins + 1,)
    counts: np.ndarray  # float64 (bins,)
    min: float
    max: float
    num: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        """Mean of the values (0 when there are none)."""
        return self.sum / self.num if self.num else 0.0


@dataclass(frozen=True)
class ParameterTensor:
    """One parameter tensor: its histogram and summary numbers (and its gradient's histogram, if any)."""

    name: str
    shape: tuple[int, ...]
    histogram: Histogram
    mean: float
    std: float
    grad: Histogram | None = None


@dataclass(frozen=True)
class ParameterSummary:
    """Every parameter tensor of a model."""

    tensors: tuple[ParameterTensor, ...]

    @property
    def total(self) -> int:
        """Number of scalar parameters."""
        return int(sum(math.prod(t.shape) for t in self.tensors))

    def _repr_html_(self) -> str:
        rows = [[t.name, "x".join(map(str, t.shape)), f"{t.mean:.4g}", f"{t.std:.4g}"] for t in self.tensors]
        return _html_table(["parameter", "shape", "mean", "std"], rows)


@dataclass(frozen=True)
class SaliencyMap(_ImageRecord):
    """One input-gradient map of one class: the raw gradient, its magnitude, and how it is drawn."""

    method: str
    class_index: int
    class_name: str
    probability: float
    gradient: np.ndarray  # float32 (3, H, W): d score / d input (guided / x CAM for those methods)
    saliency: np.ndarray  # float32 (H, W): max over colour channels of |gradient|
    image: np.ndarray  # uint8 (H, W, 3): the map as drawn


@dataclass(frozen=True)
class SaliencyResult(_ImageRecord):
    """Every requested class map of one saliency method for one input, and a labelled panel."""

    method: str
    image_name: str
    maps: tuple[SaliencyMap, ...]
    image: np.ndarray  # the labelled panel: one map per class, side by side
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class FilterGrid(_ImageRecord):
    """Inputs synthesised to excite chosen filters of one layer (activation maximisation), as a grid."""

    layer: str
    filters: tuple[int, ...]
    size: int  # side of each synthesised input, in pixels
    steps: int  # optimisation steps actually run (fewer than asked when the time budget ran out)
    stopped_early: bool
    start_activation: tuple[float, ...]  # mean activation of each filter on the starting noise
    final_activation: tuple[float, ...]  # ... and on the final image
    tiles: np.ndarray  # uint8 (N, size, size, 3): one synthesised input per filter
    image: np.ndarray  # uint8 (H, W, 3): the tiles labelled with their filter index, as a grid


@dataclass(frozen=True)
class EmbeddingSet:
    """Penultimate-layer features of many images, with thumbnails and per-image metadata."""

    layer: str  # where the features come from, e.g. "fc input"
    features: np.ndarray  # float32 (N, D)
    image_names: tuple[str, ...]
    files: tuple[str, ...]
    predicted_indices: tuple[int, ...]
    predicted_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    thumbnails: np.ndarray  # uint8 (N, t, t, 3)

    METADATA_HEADER = ("file name", "predicted class", "probability")

    def metadata(self) -> list[list[str]]:
        """One row per image, in :attr:`METADATA_HEADER` order."""
        return [[f, n, f"{p:.4f}"] for f, n, p in zip(self.files, self.predicted_names, self.probabilities)]

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class CamComparison(_ImageRecord):
    """One input's photo next to each CAM method's overlay, one row per explained class."""

    image_name: str
    methods: tuple[str, ...]
    class_indices: tuple[int, ...]
    image: np.ndarray  # uint8 (H, W, 3): (1 + len(methods)) labelled tiles per row


@dataclass(frozen=True)
class MethodQuality:
    """One CAM method's mean keep / remove / score over its maps (see :class:`CamQuality`)."""

    method: str
    keep: float
    remove: float
    score: float
    count: int  # maps averaged (images x classes)


@dataclass(frozen=True)
class CamQuality:
    """How much each CAM's top pixels matter to the model (ROAD imputation), one entry per method, image, class.

    ``keep``: change in the class's softmax probability when only the top ``percent`` % of
    the map's pixels are kept (the rest imputed); ``remove``: the change when those pixels
    are imputed; both in [-1, 1]. ``score = (keep - remove) / 2``, in [-1, 1]: higher is better.
    """

    percent: float
    methods: tuple[str, ...]
    image_names: tuple[str, ...]
    class_indices: tuple[int, ...]
    class_names: tuple[str, ...]
    confidence: tuple[float, ...]  # the class's probability on the untouched image
    keep: tuple[float, ...]
    remove: tuple[float, ...]

    @property
    def score(self) -> tuple[float, ...]:
        """``(keep - remove) / 2`` per entry (ROADCombined at one threshold): higher is better."""
        return tuple((k - r) / 2.0 for k, r in zip(self.keep, self.remove))

    def __len__(self) -> int:
        return len(self.methods)

    @classmethod
    def concat(cls, parts: Sequence[CamQuality]) -> CamQuality:
        """One record from several (e.g. one per batch of images); all must use the same ``percent``."""
        if not parts:
            raise ArgumentError("parts=[] holds no CamQuality records to join: give at least one", parameter="parts")
        percents = {p.percent for p in parts}
        if len(percents) != 1:
            raise ArgumentError(f"parts have different percent values {sorted(percents)}: join records scored with "
                                "the same percent", parameter="parts")
        fields = ("methods", "image_names", "class_indices", "class_names", "confidence", "keep", "remove")
        joined = {f: tuple(v for p in parts for v in getattr(p, f)) for f in fields}
        return cls(percent=parts[0].percent, **joined)

    def by_method(self) -> list[MethodQuality]:
        """Mean keep / remove / score per method, best score first."""
        groups: dict[str, list[int]] = {}
        for i, method in enumerate(self.methods):
            groups.setdefault(method, []).append(i)
        score = self.score
        rows = [MethodQuality(method=m, keep=float(np.mean([self.keep[i] for i in idx])),
                              remove=float(np.mean([self.remove[i] for i in idx])),
                              score=float(np.mean([score[i] for i in idx])), count=len(idx))
                for m, idx in groups.items()]
        return sorted(rows, key=lambda r: -r.score)

    def explanation(self) -> str:
        """One line saying what the columns mean."""
        p = f"{self.percent:g}%"
        return (f"score = (keep - remove) / 2, higher is better: keep = change in the class's softmax probability "
                f"when only the map's top {p} of pixels are kept, remove = the change when that top {p} is "
                f"removed (ROAD: pixels imputed from their neighbours)")

    def _rows(self) -> list[list[object]]:
        return [[r.method, f"{r.keep:+.4f}", f"{r.remove:+.4f}", f"{r.score:+.4f}", r.count]
                for r in self.by_method()]

    def _header(self) -> list[str]:
        p = f"{self.percent:g}%"
        return ["method", f"keep top {p}", f"remove top {p}", "score", "maps"]

    def to_markdown(self) -> str:
        """Per-method means as a Markdown table, best first, under a line explaining the score."""
        return f"{self.explanation()}\n\n" + markdown_table(self._header(), self._rows())

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.explanation())}</p>" + _html_table(self._header(), self._rows())


@dataclass(frozen=True)
class PointingGame:
    """Pointing game: does each CAM's peak fall inside the object's box (grown by ``margin`` pixels)?"""

    methods: tuple[str, ...]
    peaks: np.ndarray  # int64 (methods, N, 2): (row, column) of each map's maximum
    boxes: np.ndarray  # int64 (N, 4): (x0, y0, x1, y1), exclusive upper bounds

    @property
    def count(self) -> int:
        """Number of images."""
        return int(self.boxes.shape[0])

    def hits(self, method: str, margin: int = 0, tolerance: float | None = None) -> np.ndarray:
        """Bool (N,): whether ``method``'s peak lies in the box grown by ``margin`` pixels, or, with
        ``tolerance``, within that Euclidean distance (pixels) of the box's nearest pixel (TorchRay's rule)."""
        peaks = self.peaks[self.methods.index(method)]
        if tolerance is None:
            return points_in_boxes(peaks, self.boxes, margin)
        rows, cols = peaks.T
        x0, y0, x1, y1 = self.boxes.T
        dx = np.maximum(np.maximum(x0 - cols, cols - (x1 - 1)), 0)
        dy = np.maximum(np.maximum(y0 - rows, rows - (y1 - 1)), 0)
        return (dx * dx + dy * dy <= tolerance * tolerance) & (x1 > x0) & (y1 > y0)

    def fraction(self, method: str, margin: int = 0) -> float:
        """Share of images whose ``method`` peak lies in the box grown by ``margin`` pixels."""
        return float(self.hits(method, margin).mean()) if self.count else float("nan")

    def to_markdown(self, margins: Sequence[int] = (0,)) -> str:
        """One row per method, one column per margin."""
        header = ["method"] + ["peak in box" + (f" ±{m} px" if m else "") for m in margins]
        rows = [[m] + [f"{self.fraction(m, g):.1%}" for g in margins] for m in self.methods]
        return markdown_table(header, rows)


@dataclass(frozen=True)
class FlowResult(_ImageRecord):
    """Optical flow between two frames: the flow field, its colour image and the two frames beside it."""

    pair_name: str
    flow: np.ndarray  # float32 (2, H, W): (dx, dy) in pixels
    mean_magnitude: float
    max_magnitude: float
    image: np.ndarray  # first frame | second frame | flow_to_image

    def headline(self) -> str:
        """One line for the console: the pair and its flow magnitudes."""
        return f"{self.pair_name}: mean flow {self.mean_magnitude:.2f} px, max {self.max_magnitude:.2f} px"

    def to_markdown(self) -> str:
        """The flow's size and magnitudes as a Markdown table."""
        h, w = self.flow.shape[1:]
        return markdown_table(["pair", "size", "mean flow magnitude (px)", "max flow magnitude (px)"],
                               [[self.pair_name, f"{w}x{h}", f"{self.mean_magnitude:.3f}",
                                 f"{self.max_magnitude:.3f}"]])


@dataclass(frozen=True)
class ClipCamResult(_ImageRecord):
    """CAMs over time of one clip and method: a (T, H, W) map per class, drawn as a strip of frames."""

    method: str
    layer: str
    clip_name: str
    class_indices: tuple[int, ...]
    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    heatmaps: np.ndarray  # float32 (k, T, H, W) in [0, 1], the clip's size
    overlays: np.ndarray  # uint8 (k, T, H, W, 3): each frame with its heatmap
    frames_shown: tuple[int, ...]  # the frame indices in the strip
    image: np.ndarray  # the strip: one row per class, one column per shown frame


# -- the dataset audit (introspect.audit) ----------------------------------------------


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
class GalleryItem(_ImageRecord):
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
class Gallery(_ImageRecord):
    """A bounded selection of images (e.g. the most confidently wrong), drawn as one grid."""

    name: str  # tag suffix, e.g. "worst_confident_wrong"
    title: str
    items: tuple[GalleryItem, ...]
    image: np.ndarray

    def to_markdown(self) -> str:
        """One row per image."""
        rows = [[i.file, i.label_name, i.predicted_name, f"{i.probability:.3f}",
                 "-" if math.isnan(i.energy) else f"{i.energy:.3f}"] for i in self.items]
        return f"**{self.title}**\n\n" + markdown_table(["file", "label", "predicted", "probability", "energy"],
                                                           rows)


@dataclass(frozen=True)
class MeanCam(_ImageRecord):
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
                ["**maps ignore the weights**" if m in self.flagged else "ok"]
                for m, row in zip(self.methods, self.correlations)]
        note = (f"Spearman rank correlation of each method's maps with the trained model's, mean over "
                f"{self.samples} images, as layers are randomised from the head down (cascading). Near 0 is good; "
                f"above {self.threshold:g} after full randomisation flags a method.")
        return note + "\n\n" + markdown_table(header, rows)


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
        if self.sanity is not None and self.sanity.flagged:
            lines.append(f"sanity check: maps of {', '.join(self.sanity.flagged)} barely change with random weights")
        return lines
