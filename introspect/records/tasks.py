"""Records of what each task's model says about one input: classes, detections, segmentation, optical flow (the
CAMs explained through them, a box or a mask's class, are :class:`~introspect.records.CamResult` records).

Boxes and maps are in the input image's own pixels (the model's own resizing undone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ImageRecord, Picture, html_table, markdown_table, markdown_text

__all__ = [
    "Predictions",
    "Detections",
    "SegmentClass",
    "Segmentation",
    "FlowResult",
]


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
        return html_table(self._HEADER, self._rows())


# -- detection --------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections(ImageRecord):
    """What a detector found in one image, best score first, and the image with them drawn.

    ``boxes`` are ``(x0, y0, x1, y1)`` in the input image's pixels (the detector's own
    resizing undone). ``masks`` (Mask R-CNN: per-detection probabilities in [0, 1]) and
    ``keypoints`` (Keypoint R-CNN: ``(x, y, visibility)`` per keypoint) are ``None``
    when the model does not give them.
    """

    image_name: str
    image_size: tuple[int, int]  # (height, width)
    boxes: np.ndarray  # float32 (D, 4)
    labels: np.ndarray  # int64 (D,)
    names: tuple[str, ...]
    scores: np.ndarray  # float32 (D,)
    score_threshold: float
    image: np.ndarray = Picture()  # uint8 (H, W, 3): the photo with boxes, names and scores drawn
    masks: np.ndarray | None = None  # float32 (D, H, W)
    keypoints: np.ndarray | None = None  # float32 (D, K, 3)

    _HEADER = ["rank", "class", "label", "score", "box (x0, y0, x1, y1)"]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def headline(self) -> str:
        """One line for the console: the image and its best detections."""
        top = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.names[:3], self.scores[:3].tolist()))
        return f"{self.image_name}: {len(self)} detections" + (f" ({top}, ...)" if len(self) > 3 else
                                                               f" ({top})" if top else "")

    def _rows(self) -> list[list[object]]:
        return [[i + 1, name, int(label), f"{float(score):.4f}", ", ".join(f"{v:.1f}" for v in box)]
                for i, (name, label, score, box) in enumerate(zip(self.names, self.labels, self.scores,
                                                                  self.boxes.tolist()))]

    def to_markdown(self) -> str:
        """The detections as a Markdown table (a line when there are none)."""
        if not len(self):
            return markdown_text(f"no detection scored {self.score_threshold:g} or more in {self.image_name}")
        height, width = self.image_size
        note = markdown_text(f"Boxes (x0, y0, x1, y1) in the pixels of the input as the model saw it "
                             f"(input/{self.image_name}, {width}x{height}), best score first.")
        return note + "\n\n" + markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        return html_table(self._HEADER, self._rows())


# -- segmentation -----------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentClass:
    """One class present in a segmentation: how many pixels it was given and its share."""

    index: int
    name: str
    pixels: int
    share: float  # pixels / all pixels, in [0, 1]
    color: tuple[int, int, int]  # its colour in the overlay and legend


@dataclass(frozen=True)
class Segmentation(ImageRecord):
    """Per-pixel classes of one image, the classes present (largest first), and the overlay with a legend."""

    image_name: str
    class_map: np.ndarray  # int64 (H, W): the argmax class of each pixel
    classes: tuple[SegmentClass, ...]
    image: np.ndarray = Picture()  # uint8: the photo with the classes drawn over it, and a legend below

    _HEADER = ["class", "index", "pixels", "share"]

    def headline(self) -> str:
        """One line for the console: the image and its largest classes."""
        return f"{self.image_name}: " + ", ".join(f"{c.name} {c.share:.1%}" for c in self.classes[:3])

    def _rows(self) -> list[list[object]]:
        return [[c.name, c.index, c.pixels, f"{c.share:.2%}"] for c in self.classes]

    def to_markdown(self) -> str:
        """The classes present as a Markdown table."""
        return markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        return html_table(self._HEADER, self._rows())


# -- optical flow ---------------------------------------------------------------------


@dataclass(frozen=True)
class FlowResult(ImageRecord):
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
