"""Records of the model itself: its layer table, its kernels, its activations, its parameters and their histograms,
and what watching it train measured at one step."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import ImageRecord, html_table, markdown_table

__all__ = [
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
]


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
        return totals + html_table(self._HEADER, self._rows())


@dataclass(frozen=True)
class KernelGrid(ImageRecord):
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
class FeatureMap(ImageRecord):
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
        return html_table(["parameter", "shape", "mean", "std"], rows)


@dataclass(frozen=True)
class FeatureStats:
    """The activation statistics of every captured layer for one input (a table beside its feature maps)."""

    image_name: str
    maps: tuple[FeatureMap, ...]

    _HEADER = ["layer", "shape", "mean", "std", "zero fraction"]

    @classmethod
    def per_image(cls, maps: Sequence[FeatureMap]) -> list[FeatureStats]:
        """One record per input, in the order the inputs first appear."""
        by_image: dict[str, list[FeatureMap]] = {}
        for fmap in maps:
            by_image.setdefault(fmap.image_name, []).append(fmap)
        return [cls(image_name=name, maps=tuple(group)) for name, group in by_image.items()]

    def _rows(self) -> list[list[object]]:
        return [[m.layer, "x".join(str(s) for s in m.shape) or "-", f"{m.mean:.4g}", f"{m.std:.4g}",
                 f"{m.zero_fraction:.3f}"] for m in self.maps]

    def to_markdown(self) -> str:
        """Per layer: shape, mean, std, fraction of zeros."""
        return markdown_table(self._HEADER, self._rows())

    def _repr_html_(self) -> str:
        return html_table(self._HEADER, self._rows())


@dataclass(frozen=True)
class LayerActivity:
    """Statistics of one layer's output on one training forward (:func:`introspect.watch`)."""

    layer: str
    mean: float
    std: float
    zero_fraction: float


@dataclass(frozen=True)
class TrainingStats:
    """What :func:`introspect.watch` measured at one logging step; a part not measured is empty or None.

    Norms and ratios are L2: ``grad_norm`` over every gradient, ``update_ratio`` is
    ``||w_s - w_{s-1}|| / ||w_s||`` over every weight; ``*_norms`` / ``*_ratios`` hold the same per parameter.
    """

    weights: tuple[tuple[str, Histogram], ...] = ()
    gradients: tuple[tuple[str, Histogram], ...] = ()
    grad_norm: float | None = None
    grad_norms: tuple[tuple[str, float], ...] = ()
    update_ratio: float | None = None
    update_ratios: tuple[tuple[str, float], ...] = ()
    lr: float | None = None
    activations: tuple[LayerActivity, ...] = ()
    probe_images: tuple[np.ndarray, ...] = ()  # uint8 (H, W, 3): the CAM of each probe image, labelled
    probe_probability: float | None = None  # mean probability of the probe images' true classes
