"""Frozen records of the detection and segmentation analyzers.

Same conventions as :mod:`introspect.records`: numbers and arrays, never live modules;
every image is a ``uint8`` numpy array, height x width x 3 (RGB), in the input image's
own pixels; records with an image render in Jupyter and convert with ``.to_pil()``.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Detections",
    "DetectionCamMap",
    "DetectionCamResult",
    "SegmentClass",
    "Segmentation",
    "SegmentationCamMap",
    "SegmentationCamResult",
]


class ImageRecordMixin:
    """A record whose ``image`` field is a uint8 HWC array: ``to_pil()`` and Jupyter rendering."""

    image: np.ndarray

    def to_pil(self):
        """The record's image as a ``PIL.Image``."""
        from PIL import Image

        return Image.fromarray(self.image)

    def _repr_png_(self) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (TensorBoard's TEXT tab renders it)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[object]]) -> str:
    """The same table as HTML (Jupyter)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detections(ImageRecordMixin):
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
    image: np.ndarray  # uint8 (H, W, 3): the photo with boxes, names and scores drawn
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
            return f"no detection scored {self.score_threshold:g} or more in {self.image_name}"
        return markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        return html_table(self._HEADER, self._rows())


@dataclass(frozen=True)
class DetectionCamMap(ImageRecordMixin):
    """The CAM of one detection: its heatmap over the input image and the overlay with its box."""

    method: str
    detection: int  # index into the image's Detections
    label: int
    name: str
    score: float
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in the input image's pixels
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], the input image's size
    image: np.ndarray  # uint8 (H, W, 3)

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heatmap's maximum."""
        return _peak(self.heatmap)


@dataclass(frozen=True)
class DetectionCamResult(ImageRecordMixin):
    """One CAM method over the top-k detections of one image, with a panel labelled by class and score."""

    method: str
    layer: str  # the module whose output was explained
    levels: tuple[str, ...]  # its feature maps that were averaged (FPN levels), or ("",) for one tensor
    image_name: str
    detections: Detections  # every detection of the image (the maps explain the first ones, or those asked for)
    maps: tuple[DetectionCamMap, ...]
    image: np.ndarray  # one overlay per explained detection, side by side
    warnings: tuple[str, ...] = field(default=())


# ------------------------------------------------------------------------ segmentation


@dataclass(frozen=True)
class SegmentClass:
    """One class present in a segmentation: how many pixels it was given and its share."""

    index: int
    name: str
    pixels: int
    share: float  # pixels / all pixels, in [0, 1]
    color: tuple[int, int, int]  # its colour in the overlay and legend


@dataclass(frozen=True)
class Segmentation(ImageRecordMixin):
    """Per-pixel classes of one image, the classes present (largest first), and the overlay with a legend."""

    image_name: str
    class_map: np.ndarray  # int64 (H, W): the argmax class of each pixel
    classes: tuple[SegmentClass, ...]
    image: np.ndarray  # uint8: the photo with the classes drawn over it, and a legend below

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


@dataclass(frozen=True)
class SegmentationCamMap(ImageRecordMixin):
    """The CAM of one class of a segmentation (its logit summed over the pixels predicted as it)."""

    method: str
    class_index: int
    class_name: str
    share: float  # of the image's pixels predicted as this class
    heatmap: np.ndarray  # float32 (H, W) in [0, 1]
    image: np.ndarray  # uint8 (H, W, 3)

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column) of the heatmap's maximum."""
        return _peak(self.heatmap)


@dataclass(frozen=True)
class SegmentationCamResult(ImageRecordMixin):
    """One CAM method over the classes present in one image, with a panel labelled by class and share."""

    method: str
    layer: str
    levels: tuple[str, ...]
    image_name: str
    segmentation: Segmentation
    maps: tuple[SegmentationCamMap, ...]
    image: np.ndarray
    warnings: tuple[str, ...] = field(default=())
