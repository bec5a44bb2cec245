"""The :class:`Reporter`: a :class:`~introspect.tensorboard.writer.RunWriter` with one method per record family.

Each method hands its records to :mod:`introspect.tensorboard.layouts` and flushes; it draws and
computes nothing. :meth:`Reporter.record` writes any record the layouts know.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..records import (
    AuditResult,
    CamComparison,
    CamQuality,
    CamResult,
    Detections,
    EmbeddingSet,
    FeatureMap,
    FeatureStats,
    FilterGrid,
    FlowResult,
    Histogram,
    InputImage,
    KernelGrid,
    ParameterSummary,
    Predictions,
    RunInfo,
    SaliencyResult,
    Segmentation,
    StructureSummary,
)
from .layouts import write_record, write_records
from .writer import RunWriter

__all__ = ["Reporter", "RUN_RECORD_FILE"]

RUN_RECORD_FILE = "introspect.json"  # a run's machine-readable record (also named in introspect_tab.runs)


class Reporter(RunWriter):
    """Writes records into one TensorBoard run directory (the tags: :data:`~introspect.tensorboard.LAYOUTS`).

    Use it as a context manager: on exit (normal, exception or Ctrl-C) the event
    file is flushed and closed.
    """

    def record(self, record: object, step: int = 0, **options: Any) -> None:
        """Any record, through its layout (:func:`~introspect.tensorboard.layouts.layout_for`), then a flush.

        Raises:
            ArgumentTypeError: no layout writes the record's type.
        """
        write_record(self, record, step, **options)

    def histogram(self, tag: str, values: np.ndarray | torch.Tensor | Histogram, step: int = 0) -> None:
        """A histogram: a :class:`~introspect.records.Histogram` record, or ``values`` of any shape (binned here by
        ``histogram_of``: finite values only, equal-width bins, on the tensor's device). Nothing to bin writes
        nothing."""
        if not isinstance(values, Histogram):
            from ..analyzers.parameters import histogram_of

            values = histogram_of(values)
        super().histogram(tag, values, step)

    # -- one method per record family (each flushes) -------------------------------------

    def run_info(self, info: Mapping[str, object], warnings: Sequence[str] = ()) -> None:
        """``run/info``: a key/value table, then a bold WARNINGS list if any."""
        self.record(RunInfo(info=dict(info), warnings=tuple(warnings)))

    def run_record(self, record: Mapping[str, object]) -> Path:
        """``introspect.json`` beside the event file: the run's machine-readable facts (model, weights, task,
        layers), which the TensorBoard tab reads to load the model again. Written whole or not at all."""
        path = self.run_dir / RUN_RECORD_FILE
        partial = path.with_suffix(".json.partial")
        try:
            partial.write_text(json.dumps(dict(record), indent=1, default=str), encoding="utf-8")
            os.replace(partial, path)
        except OSError as error:
            raise self._output_error(error) from None
        return path

    def structure(self, summary: StructureSummary) -> None:
        """``structure/summary``: the layer table."""
        self.record(summary)

    def kernels(self, grids: Sequence[KernelGrid]) -> None:
        """``kernels/<layer>``: one image per grid."""
        write_records(self, grids)

    def features(self, maps: Sequence[FeatureMap]) -> None:
        """``features/<layer>/<image_name>`` images, and a ``features/stats/<image_name>`` table per input."""
        write_records(self, [*maps, *FeatureStats.per_image(maps)])

    def predictions(self, preds: Predictions) -> None:
        """``predictions/<image_name>``: the top-k table."""
        self.record(preds)

    def input_image(self, name: str, image: np.ndarray) -> None:
        """``input/<name>``: the input as the model saw it."""
        self.record(InputImage(name=name, image=image))

    def cams(self, results: Sequence[CamResult], fps: int = 4) -> dict[str, str]:
        """``cam/<method>/<image_name>``: the labelled panel of every map, whatever the task (a clip: the strip of
        frames, and an animated GIF at ``cam/<method>/<clip>/video`` of its first map where TensorBoard's
        encoder, moviepy 1.x, is installed).

        Returns:
            The ``run/info`` line on the clips' videos, ``{"cam videos": ...}`` (written, or why not), where a
            result holds a clip; else nothing.
        """
        write_records(self, results, fps=fps)
        if not any(m.frames is not None for r in results for m in r.maps):
            return {}
        if self.can_write_video():
            return {"cam videos": "written: cam/<method>/<clip>/video, an animated GIF (IMAGES tab)"}
        return {"cam videos": "not written: TensorBoard's video encoder needs moviepy 1.x (pip install 'moviepy<2'); "
                              "the IMAGES strips show the frames"}

    def cam_comparisons(self, comparisons: Sequence[CamComparison]) -> None:
        """``cam/compare/<image_name>``: the photo and every method's overlay, side by side."""
        write_records(self, comparisons)

    def saliency(self, results: Sequence[SaliencyResult]) -> None:
        """``saliency/<method>/<image_name>``: the labelled panel of every class."""
        write_records(self, results)

    def filters(self, grids: Sequence[FilterGrid]) -> None:
        """``filters/<layer>``: the synthesised inputs of each layer, labelled with their filter index."""
        write_records(self, grids)

    def embedding(self, embedding: EmbeddingSet, tag: str | None = None) -> None:
        """The features into the PROJECTOR tab (``embeddings/<layer>``), with thumbnails and metadata."""
        self.record(embedding, tag=tag)

    def parameters(self, summary: ParameterSummary, step: int = 0) -> None:
        """``parameters/<name>`` histograms, and ``gradients/<name>`` where a gradient exists."""
        self.record(summary, step)

    def quality(self, quality: CamQuality, step: int = 0) -> None:
        """Per CAM method, averaged over images and classes: ``quality/<method>/keep<P>``, ``.../remove<P>``,
        ``.../score`` scalars, and the ``quality/summary`` table (best score first)."""
        self.record(quality, step)

    def detections(self, detections: Detections) -> None:
        """``detections/<image>``: the boxes drawn (IMAGES), and ``.../table`` (TEXT)."""
        self.record(detections)

    def segmentation(self, result: Segmentation) -> None:
        """``segmentation/<image>``: the mask over the photo with its legend (IMAGES), and ``.../table``: the class
        shares (TEXT)."""
        self.record(result)

    def flow(self, result: FlowResult) -> None:
        """``flow/<pair>``: both frames and the flow image (IMAGES), and ``.../table``: the magnitudes (TEXT)."""
        self.record(result)

    def audit(self, result: AuditResult) -> None:
        """Everything an :class:`~introspect.records.AuditResult` holds, under ``audit/`` (see the README's tag
        table), and the run's settings with the headline figures in HPARAMS."""
        self.record(result)
