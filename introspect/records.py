"""Frozen dataclasses that analyzers return.

Records hold numbers and arrays, never live modules or display strings. Every
image they carry follows one convention: a ``uint8`` numpy array, height x width
x 3 (RGB). Records that hold an image render themselves in Jupyter
(``_repr_png_``) and convert with ``.to_pil()``; tables render as HTML.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LayerRow",
    "StructureSummary",
    "KernelGrid",
    "FeatureMap",
    "Predictions",
    "CamMap",
    "CamResult",
    "ParameterTensor",
    "ParameterSummary",
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


def _markdown_table(header: list[str], rows: list[list[object]]) -> str:
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
        return f"**{self.model_name}**: {self.totals_line()}\n\n" + _markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        totals = f"<p><b>{html.escape(self.model_name)}</b>: {html.escape(self.totals_line())}</p>"
        return totals + _html_table(self._HEADER, self._rows())


@dataclass(frozen=True)
class KernelGrid(_ImageRecord):
    """The weights of one conv layer drawn as a grid of tiles.

    ``mode`` is ``"rgb"`` (one colour tile per filter of a 3-channel first layer),
    ``"channels"`` (one grey tile per filter x input channel, rows are filters) or
    ``"depthwise"`` (one grey tile per channel of a depthwise conv).
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

    def _rows(self) -> list[list[object]]:
        ranked = zip(self.indices, self.names, self.probabilities)
        return [[rank, name, index, f"{p:.4f}"] for rank, (index, name, p) in enumerate(ranked, start=1)]

    def to_markdown(self) -> str:
        """The predictions as a Markdown table."""
        return _markdown_table(self._HEADER, self._rows())

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
class ParameterTensor:
    """One parameter tensor's values, flattened, and its summary numbers."""

    name: str
    shape: tuple[int, ...]
    values: np.ndarray
    mean: float
    std: float
    grad: np.ndarray | None = None


@dataclass(frozen=True)
class ParameterSummary:
    """Every parameter tensor of a model."""

    tensors: tuple[ParameterTensor, ...]

    @property
    def total(self) -> int:
        """Number of scalar parameters."""
        return int(sum(t.values.size for t in self.tensors))

    def _repr_html_(self) -> str:
        rows = [[t.name, "x".join(map(str, t.shape)), f"{t.mean:.4g}", f"{t.std:.4g}"] for t in self.tensors]
        return _html_table(["parameter", "shape", "mean", "std"], rows)
