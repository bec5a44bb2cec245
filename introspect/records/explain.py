"""Records of the explanations: class activation maps (one record for every task, a map per subject: a class,
a box, a mask's class, a clip's class), saliency, synthesised filters, method comparisons, the maps' quality
(ROAD) and the pointing game, and the embeddings for the projector.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ArgumentError
from ..geometry import points_in_boxes
from .base import ImageRecord, Picture, heatmap_peak, html_table, markdown_table
from .tasks import Detections, Segmentation

__all__ = [
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
]


# What each kind of subject's score is, in words (labels, tables).
SUBJECT_KINDS = {
    "class": "probability",  # a classifier's class: its softmax probability
    "box": "detection score",  # a detection: its box score
    "mask class": "pixel share",  # a class of a segmentation: the share of the image's pixels predicted as it
    "clip class": "probability",  # a video model's class of the whole clip: its softmax probability
}


@dataclass(frozen=True)
class Subject:
    """What one map explains: a classifier's class, a detection (box), a segmentation's class, a clip's class.

    ``index`` is the class index (a detection: its label), ``score`` what the model gave it: a
    probability (``class``, ``clip class``), a detection score (``box``) or the share of the image's
    pixels predicted as it (``mask class``); :attr:`score_name` says which in words.
    """

    kind: str  # one of SUBJECT_KINDS: "class", "box", "mask class", "clip class"
    index: int
    name: str
    score: float
    box: tuple[float, float, float, float] | None = None  # a detection's (x0, y0, x1, y1), the input's pixels
    detection: int | None = None  # a detection's place in the image's Detections (best score first)

    def __post_init__(self) -> None:
        if self.kind not in SUBJECT_KINDS:
            raise ArgumentError(f"kind={self.kind!r} is not a CAM subject: one of {', '.join(SUBJECT_KINDS)}",
                                parameter="kind")

    @property
    def score_name(self) -> str:
        """What :attr:`score` is, in words: "probability", "detection score" or "pixel share"."""
        return SUBJECT_KINDS[self.kind]

    @property
    def caption(self) -> str:
        """The label drawn over its map: the name and score ("tabby 75.0%", a detection "cat 0.93")."""
        return f"{self.name} {self.score:.2f}" if self.kind == "box" else f"{self.name} {self.score:.1%}"


@dataclass(frozen=True)
class CamMap(ImageRecord):
    """One class activation map of one subject: the normalised heatmap and its overlay on the input.

    An image's map is (H, W) and ``image`` its overlay (a detection's with its box drawn); a clip's map
    is (T, H, W), ``image`` its strip of shown frames and ``frames`` the overlay of every frame.
    """

    method: str
    subject: Subject
    heatmap: np.ndarray  # float32 in [0, 1], the input's size: (H, W), or (T, H, W) for a clip
    image: np.ndarray = Picture()  # uint8 (H, W, 3): the heatmap drawn over the input (a clip: its strip of frames)
    frames: np.ndarray | None = None  # a clip: uint8 (T, H, W, 3), each frame with its heatmap; None for an image

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heatmap's maximum (a clip's: of its maximum over time)."""
        return heatmap_peak(self.heatmap if self.heatmap.ndim == 2 else self.heatmap.max(axis=0))

    @property
    def class_index(self) -> int:
        """The explained class's index (a detection: its label)."""
        return self.subject.index

    @property
    def class_name(self) -> str:
        """The explained class's name."""
        return self.subject.name

    @property
    def probability(self) -> float | None:
        """The class's softmax probability (``class`` and ``clip class`` subjects; None for a box or mask class,
        whose :attr:`Subject.score` is a detection score or pixel share)."""
        return self.subject.score if self.subject.score_name == "probability" else None


@dataclass(frozen=True)
class CamResult(ImageRecord):
    """Every map of one method for one input (image or clip), and a panel labelled with each subject's caption.

    The same record for every task: a classifier's maps explain its top classes, a detector's its top
    detections, a segmenter's the classes present, a video model's the clip's top classes.
    """

    method: str
    layer: str  # the module whose output was explained
    image_name: str  # the input's name (a clip's)
    maps: tuple[CamMap, ...]
    image: np.ndarray = Picture()  # the panel: one overlay per map side by side (a clip: one strip of frames per map)
    warnings: tuple[str, ...] = field(default=())
    levels: tuple[str, ...] = field(default=())  # the layer's feature maps averaged (FPN levels), ("",) for one
    prediction: Detections | Segmentation | None = None  # the task's prediction of this input, where it has one


@dataclass(frozen=True)
class SaliencyMap(ImageRecord):
    """One input-gradient map of one class: the raw gradient, its magnitude, and how it is drawn."""

    method: str
    class_index: int
    class_name: str
    probability: float
    gradient: np.ndarray  # float32 (3, H, W): d score / d input (guided / x CAM for those methods)
    saliency: np.ndarray  # float32 (H, W): max over colour channels of |gradient|
    image: np.ndarray  # uint8 (H, W, 3): the map as drawn


@dataclass(frozen=True)
class SaliencyResult(ImageRecord):
    """Every requested class map of one saliency method for one input, and a labelled panel."""

    method: str
    image_name: str
    maps: tuple[SaliencyMap, ...]
    image: np.ndarray  # the labelled panel: one map per class, side by side
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class FilterGrid(ImageRecord):
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
class CamComparison(ImageRecord):
    """One input's photo next to each CAM method's overlay, one row per explained subject (class, box, mask class)."""

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
        return f"<p>{html.escape(self.explanation())}</p>" + html_table(self._header(), self._rows())


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
