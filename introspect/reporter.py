"""Write analyzer records into a TensorBoard run.

This is the only module that talks to ``torch.utils.tensorboard``, and it imports
it lazily (in :class:`Reporter`), so ``import introspect.reporter`` stays cheap and
works in environments where only the notebook API is used. The reporter computes
nothing: it formats records (Markdown tables, tags) and writes them.

Tags are ``<section>/<rest>``; layer and parameter names keep their dots
(``kernels/features.0``, ``parameters/layer4.1.conv2.weight``). :attr:`Reporter.tags`
counts the summaries written per section, for the CLI's "wrote: ..." line.

Every record writer flushes when it is done. A flush only hands the queued events
to the OS (cheap next to drawing a feature map), and it means that an event file
left behind by an interrupted or killed run holds every record written so far:
TensorBoard reads events up to the last complete one.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, ArgumentTypeError, OutputError, StateError
from .records import Detections, Segmentation
from .records import (
    AuditResult,
    CamComparison,
    CamQuality,
    CamResult,
    ClipCamResult,
    EmbeddingSet,
    FlowResult,
    FilterGrid,
    SaliencyResult,
    FeatureMap,
    Histogram,
    KernelGrid,
    ParameterSummary,
    Predictions,
    StructureSummary,
    markdown_table,
)

__all__ = ["new_run_dir", "Reporter"]

_MAX_REASON_CHARS = 300


def new_run_dir(logdir: str | Path, run_name: str | None, model_name: str) -> Path:
    """Create and return a fresh run directory ``LOGDIR/RUN``; never reuse one.

    ``RUN`` defaults to ``<model_name>-<YYYYmmdd-HHMMSS>``. If that directory exists
    (two runs in the same second, or a user-given name used before), ``-2``, ``-3``,
    ... is appended.

    Args:
        logdir: the folder of runs (created if missing).
        run_name: the run's name, or None for ``<model_name>-<timestamp>``.
        model_name: the model's name.

    Returns:
        The new, empty run directory.

    Raises:
        OutputError: ``logdir`` cannot be written.
    """
    logdir = Path(logdir)
    base = run_name or f"{model_name}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        suffix = 1
        while True:
            candidate = logdir / (base if suffix == 1 else f"{base}-{suffix}")
            try:
                candidate.mkdir(parents=True)  # exist_ok=False: atomic "claim this name"
                return candidate
            except FileExistsError:
                suffix += 1
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"cannot write to logdir={str(logdir)!r} ({reason}): choose another logdir",
                          parameter="logdir") from error


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line, cut to a readable length."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def _cell(value: object) -> str:
    """A value made safe for one Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape) or "-"


_THREAD_HOOK_LOCK = threading.Lock()
_THREAD_HOOK_INSTALLED = False


def _quiet_writer_thread() -> None:
    """Keep TensorBoard's writer thread from printing a traceback when the disk is full or gone.

    The thread stores its exception and the next write, flush or close on the main thread raises
    it again, where :class:`Reporter` turns it into one :class:`OutputError` line. Other threads'
    exceptions go to the previous hook unchanged.
    """
    global _THREAD_HOOK_INSTALLED
    with _THREAD_HOOK_LOCK:
        if _THREAD_HOOK_INSTALLED:
            return
        previous = threading.excepthook

        def hook(args: Any) -> None:
            if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
                return
            previous(args)

        threading.excepthook = hook
        _THREAD_HOOK_INSTALLED = True


class Reporter:
    """Writes records into one TensorBoard run directory.

    Use it as a context manager: on exit (normal, exception or Ctrl-C) the event
    file is flushed and closed.
    """

    def __init__(self, run_dir: str | Path, flush_secs: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: the only tensorboard import

        _quiet_writer_thread()
        self.run_dir = Path(run_dir)
        self.tags: dict[str, int] = {}
        try:
            self._writer: Any = SummaryWriter(log_dir=str(self.run_dir), flush_secs=flush_secs)
        except OSError as error:
            raise self._output_error(error) from None

    @classmethod
    def from_writer(cls, writer: Any) -> Reporter:
        """A reporter that writes through an existing ``SummaryWriter`` (ArgumentTypeError, a TypeError, otherwise).

        Closing the reporter closes that writer; leave it open if its owner closes it.
        """
        from torch.utils.tensorboard import SummaryWriter

        if not isinstance(writer, SummaryWriter):
            raise ArgumentTypeError(f"writer is a {type(writer).__name__}: give a "
                                    "torch.utils.tensorboard.SummaryWriter", parameter="writer")
        reporter = cls.__new__(cls)
        reporter.run_dir = Path(writer.log_dir)
        reporter.tags = {}
        reporter._writer = writer
        return reporter

    # -- lifetime -------------------------------------------------------------------

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._writer is None

    def _output_error(self, error: OSError) -> OutputError:
        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        return OutputError(f"cannot write the TensorBoard event file in {self.run_dir} ({reason}); the events "
                           "written before this are kept there: free space or choose another log folder")

    def flush(self) -> None:
        """Hand every queued event to the event file (a full disk or lost folder: one OutputError)."""
        if self._writer is not None:
            try:
                self._writer.flush()
            except OSError as error:
                self._abandon()
                raise self._output_error(error) from None

    @contextlib.contextmanager
    def _guard(self):
        """Turn the writer thread's OSError (re-raised on the next write) into one OutputError."""
        try:
            yield
        except OSError as error:
            self._abandon()
            raise self._output_error(error) from None

    def _abandon(self) -> None:
        """Drop a writer whose thread has failed (closing it would raise the same error again)."""
        writer, self._writer = self._writer, None
        with contextlib.suppress(Exception):
            writer.close()

    def close(self) -> None:
        """Flush and close the event file. Calling it again does nothing."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()  # SummaryWriter.close flushes first
            except OSError as error:
                raise self._output_error(error) from None

    def _open_writer(self) -> Any:
        if self._writer is None:
            # SummaryWriter would silently start a second event file; refuse instead.
            raise StateError(f"Reporter for {self.run_dir} is closed: open a new one")
        return self._writer

    def _count(self, tag: str) -> None:
        section = tag.split("/", 1)[0]
        self.tags[section] = self.tags.get(section, 0) + 1

    # -- primitives -----------------------------------------------------------------

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """A Markdown text summary (TensorBoard's TEXT tab), stored at exactly ``tag``."""
        from torch.utils.tensorboard.summary import text as text_summary

        # SummaryWriter.add_text would store it as "<tag>/text_summary"; keep the tag
        # scheme exact by writing torch's own text proto with the tag put back.
        summary = text_summary(tag, markdown)
        summary.value[0].tag = tag
        with self._guard():
            self._open_writer()._get_file_writer().add_summary(summary, step)
        self._count(tag)

    def image(self, tag: str, image: np.ndarray, step: int = 0) -> None:
        """A ``uint8`` height x width x 3 image."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ArgumentError(f"image for {tag!r} is {image.dtype} {image.shape}: it must be uint8 HxWx3",
                                parameter="image")
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        # add_image's own PNG encoding (zlib level 6) costs 3-5x more than level 1 for ~10% smaller files.
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
        height, width = image.shape[:2]
        encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
        with self._guard():
            self._open_writer()._get_file_writer().add_summary(
                Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)
        self._count(tag)

    def scalar(self, tag: str, value: float, step: int = 0) -> None:
        """One number."""
        with self._guard():
            self._open_writer().add_scalar(tag, float(value), global_step=step)
        self._count(tag)

    def histogram(self, tag: str, values: np.ndarray | torch.Tensor | Histogram, step: int = 0) -> None:
        """A histogram: a :class:`Histogram` record, or ``values`` of any shape (binned here by
        ``histogram_of``: finite values only, equal-width bins). Nothing to bin writes nothing."""
        if not isinstance(values, Histogram):
            from .analyzers.parameters import histogram_of

            values = histogram_of(values)
        if values.num == 0:  # TensorBoard cannot show an empty histogram
            return
        with self._guard():
            self._open_writer().add_histogram_raw(
                tag, min=values.min, max=values.max, num=values.num, sum=values.sum, sum_squares=values.sum_squares,
                bucket_limits=values.edges[1:].tolist(), bucket_counts=values.counts.tolist(), global_step=step)
        self._count(tag)

    def graph(self, model: nn.Module, example_input: torch.Tensor) -> str | None:
        """Trace ``model`` on ``example_input`` into the GRAPHS tab.

        Returns ``None`` on success. If tracing fails, writes the one-line reason as
        text at ``graph/error`` and returns it instead of raising. Either way every
        module's ``training`` flag is put back as it was (``add_graph`` resets them all
        to the root's flag).
        """
        writer = self._open_writer()
        flags = [(module, module.training) for module in model.modules()]
        try:
            with torch.no_grad(), _quiet_tracing():
                writer._get_file_writer().add_graph(_traced_graph(model, example_input))
        except Exception as error:  # any tracing failure is a note, not a crash
            reason = _one_line(error)
            self.text("graph/error", f"The model graph could not be traced: `{reason}`")
            return reason
        else:
            self._count("graph")
            return None
        finally:
            for module, training in flags:
                module.training = training
            self.flush()

    # -- record writers (each flushes: see module docstring) -------------------------

    def run_info(self, info: dict[str, object], warnings: Sequence[str] = ()) -> None:
        """``run/info``: a key/value table, then a bold WARNINGS list if any."""
        markdown = markdown_table(["key", "value"], [[_cell(k), _cell(v)] for k, v in info.items()])
        if warnings:
            markdown += "\n\n**WARNINGS**\n\n" + "\n".join(f"- **{_cell(w)}**" for w in warnings)
        self.text("run/info", markdown)
        self.flush()

    def structure(self, summary: StructureSummary) -> None:
        """``structure/summary``: the layer table."""
        self.text("structure/summary", summary.to_markdown())
        self.flush()

    def kernels(self, grids: Sequence[KernelGrid]) -> None:
        """``kernels/<layer>``: one image per grid."""
        for grid in grids:
            self.image(f"kernels/{grid.layer}", grid.image)
        self.flush()

    def features(self, maps: Sequence[FeatureMap]) -> None:
        """``features/<layer>/<image_name>`` images, and a ``features/stats/<image_name>`` table per input."""
        for fmap in maps:
            self.image(f"features/{fmap.layer}/{fmap.image_name}", fmap.image)
        by_image: dict[str, list[FeatureMap]] = {}
        for fmap in maps:
            by_image.setdefault(fmap.image_name, []).append(fmap)
        for image_name, image_maps in by_image.items():
            self.text(f"features/stats/{image_name}", _feature_stats_table(image_maps))
        self.flush()

    def predictions(self, preds: Predictions) -> None:
        """``predictions/<image_name>``: the top-k table."""
        self.text(f"predictions/{preds.image_name}", preds.to_markdown())
        self.flush()

    def input_image(self, name: str, image: np.ndarray) -> None:
        """``input/<name>``: the input as the model saw it."""
        self.image(f"input/{name}", image)
        self.flush()

    def cams(self, results: Sequence[CamResult]) -> None:
        """``cam/<method>/<image_name>``: the labelled panel of every class."""
        for result in results:
            self.image(f"cam/{result.method}/{result.image_name}", result.image)
        self.flush()

    def cam_comparisons(self, comparisons: Sequence[CamComparison]) -> None:
        """``cam/compare/<image_name>``: the photo and every method's overlay, side by side."""
        for comparison in comparisons:
            self.image(f"cam/compare/{comparison.image_name}", comparison.image)
        self.flush()

    def saliency(self, results: Sequence[SaliencyResult]) -> None:
        """``saliency/<method>/<image_name>``: the labelled panel of every class."""
        for result in results:
            self.image(f"saliency/{result.method}/{result.image_name}", result.image)
        self.flush()

    def filters(self, grids: Sequence[FilterGrid]) -> None:
        """``filters/<layer>``: the synthesised inputs of each layer, labelled with their filter index."""
        for grid in grids:
            self.image(f"filters/{grid.layer}", grid.image)
        self.flush()

    def embedding(self, embedding: EmbeddingSet, tag: str | None = None) -> None:
        """The features into the PROJECTOR tab (``embeddings/<layer>``), with thumbnails and metadata."""
        tag = tag or f"embeddings/{embedding.layer.split()[0]}"
        rows = [[_tsv_cell(v) for v in row] for row in embedding.metadata()]
        thumbnails = torch.from_numpy(embedding.thumbnails).permute(0, 3, 1, 2).float() / 255.0
        self._open_writer().add_embedding(torch.from_numpy(embedding.features), metadata=rows,
                                          label_img=thumbnails, tag=tag,
                                          metadata_header=list(embedding.METADATA_HEADER))
        self._count(tag)
        self.flush()

    def parameters(self, summary: ParameterSummary, step: int = 0) -> None:
        """``parameters/<name>`` histograms, and ``gradients/<name>`` where a gradient exists."""
        for tensor in summary.tensors:
            self.histogram(f"parameters/{tensor.name}", tensor.histogram, step)
            if tensor.grad is not None:
                self.histogram(f"gradients/{tensor.name}", tensor.grad, step)
        self.flush()

    def quality(self, quality: CamQuality, step: int = 0) -> None:
        """Per CAM method, averaged over images and classes: ``quality/<method>/keep<P>``, ``.../remove<P>``,
        ``.../score`` scalars, and the ``quality/summary`` table (best score first)."""
        percent = f"{quality.percent:g}"
        for row in quality.by_method():
            self.scalar(f"quality/{row.method}/keep{percent}", row.keep, step)
            self.scalar(f"quality/{row.method}/remove{percent}", row.remove, step)
            self.scalar(f"quality/{row.method}/score", row.score, step)
        self.text("quality/summary", quality.to_markdown(), step)
        self.flush()

    def detections(self, detections: Detections) -> None:
        """``detections/<image>``: the boxes drawn (IMAGES), and ``.../table`` (TEXT)."""
        self.image(f"detections/{detections.image_name}", detections.image)
        self.text(f"detections/{detections.image_name}/table", detections.to_markdown())
        self.flush()

    def segmentation(self, result: Segmentation) -> None:
        """``segmentation/<image>``: the mask over the photo with its legend (IMAGES), and ``.../table``: the class
        shares (TEXT)."""
        self.image(f"segmentation/{result.image_name}", result.image)
        self.text(f"segmentation/{result.image_name}/table", result.to_markdown())
        self.flush()

    def flow(self, result: FlowResult) -> None:
        """``flow/<pair>``: both frames and the flow image (IMAGES), and ``.../table``: the magnitudes (TEXT)."""
        self.image(f"flow/{result.pair_name}", result.image)
        self.text(f"flow/{result.pair_name}/table", result.to_markdown())
        self.flush()

    def clip_cams(self, results: Sequence[ClipCamResult], fps: int = 4) -> bool:
        """``cam/<method>/<clip>``: the strip of frames with their heatmaps; also an animated GIF (IMAGES tab) at
        ``cam/<method>/<clip>/video`` of the top class's overlay where TensorBoard's encoder (moviepy) is installed.

        Returns whether the videos were written.
        """
        can_encode = _video_encoder_available()
        for result in results:
            self.image(f"cam/{result.method}/{result.clip_name}", result.image)
            if can_encode:
                frames = torch.from_numpy(result.overlays[:1]).permute(0, 1, 4, 2, 3)  # (1, T, 3, H, W) uint8
                tag = f"cam/{result.method}/{result.clip_name}/video"
                self._open_writer().add_video(tag, frames, fps=fps)
                self._count(tag)
        self.flush()
        return can_encode

    # -- the dataset audit ------------------------------------------------------------

    def audit(self, result: AuditResult) -> None:
        """Everything an :class:`AuditResult` holds, under ``audit/`` (see the README's tag table).

        Scalars ``audit/accuracy/top1|top5``, ``audit/pointing/<method>``, ``audit/pointing/centre_baseline``,
        ``audit/energy_in_box/<method>``, ``audit/sanity/<method>``; text ``audit/protocol``, ``audit/per_class``,
        ``audit/galleries``, ``audit/sanity``, ``audit/skipped``; images ``audit/confusion_matrix``,
        ``audit/mean_cam/<class>``, ``audit/worst_confident_wrong``, ``audit/lowest_pointing``; PR curves
        ``audit/pr/<class>``; the projector sample ``audit/projector``; and the run's settings with the
        headline figures in HPARAMS.
        """
        headline = {tag: value for tag, value in result.headline().items() if np.isfinite(value)}
        for tag, value in headline.items():
            self.scalar(tag, value)
        self.text("audit/protocol", result.protocol)
        if result.classes:
            self.text("audit/per_class", result.per_class_markdown())
        if result.skipped:
            shown = "\n".join(f"- {_cell(f)}" for f in result.skipped_files)
            self.text("audit/skipped", f"**{result.skipped} files could not be decoded and were skipped**; the "
                                       f"first ones:\n\n{shown}")
        if len(result.confusion_classes) > 0 and result.labelled:
            self.image("audit/confusion_matrix", _confusion_figure(result))
        for row, c in enumerate(result.pr_classes):
            self._pr_curve(f"audit/pr/{_tag_part(_class(result, c))}", result.pr_positive[row],
                           result.pr_negative[row])
        for mean_cam in result.mean_cams:
            self.image(f"audit/mean_cam/{_tag_part(mean_cam.class_name)}", mean_cam.image)
        for gallery in result.galleries:
            self.image(f"audit/{gallery.name}", gallery.image)
        if result.galleries:
            self.text("audit/galleries", "\n\n".join(g.to_markdown() for g in result.galleries))
        if result.sanity is not None:
            self.text("audit/sanity", result.sanity.to_markdown())
            for method, row in zip(result.sanity.methods, result.sanity.correlations):
                self.scalar(f"audit/sanity/{method}", float(row[-1]))
        if result.sample is not None and len(result.sample):
            self._audit_projector(result)
        self._hparams(result.settings, headline)
        self.flush()

    def _pr_curve(self, tag: str, positive: np.ndarray, negative: np.ndarray) -> None:
        """A precision-recall curve from score histograms: threshold i is ``i / bins``."""
        from torch.utils.tensorboard.summary import pr_curve_raw

        tp = np.cumsum(positive[::-1])[::-1].astype(np.float64)  # images of the class scoring >= threshold
        fp = np.cumsum(negative[::-1])[::-1].astype(np.float64)
        fn = positive.sum() - tp
        tn = negative.sum() - fp
        precision = tp / np.maximum(tp + fp, 1)
        recall = tp / np.maximum(tp + fn, 1)
        summary = pr_curve_raw(tag, tp, fp, tn, fn, precision, recall, num_thresholds=len(positive))
        with self._guard():
            self._open_writer()._get_file_writer().add_summary(summary, 0)
        self._count(tag)

    def _audit_projector(self, result: AuditResult) -> None:
        sample = result.sample
        rows = [[_tsv_cell(v) for v in row] for row in sample.metadata()]
        thumbnails = torch.from_numpy(sample.thumbnails).permute(0, 3, 1, 2).float() / 255.0
        with self._guard():
            self._open_writer().add_embedding(torch.from_numpy(sample.features), metadata=rows,
                                              label_img=thumbnails, tag="audit/projector",
                                              metadata_header=list(sample.METADATA_HEADER))
        self._count("audit/projector")

    def _hparams(self, settings: dict, metrics: dict[str, float]) -> None:
        """Settings and headline figures in the HPARAMS tab of this run (not a sub-run, as add_hparams does)."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        experiment, start, end = hparams(values, metrics)
        with self._guard():
            writer = self._open_writer()._get_file_writer()
            for summary in (experiment, start, end):
                writer.add_summary(summary)
        self._count("hparams")


def _class(result: AuditResult, index: int) -> str:
    names = result.category_names
    return names[index] if 0 <= index < len(names) else f"class {index}"


def _tag_part(name: str) -> str:
    """A class name made safe for one tag segment."""
    return "_".join(str(name).replace("/", " ").split()) or "-"


def _confusion_figure(result: AuditResult) -> np.ndarray:
    """The confusion matrix (rows: true class, columns: predicted; row-normalised colours) as an RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = result.confusion
    names = [_class(result, c) for c in result.confusion_classes]
    k = len(names)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, np.maximum(rows, 1))
    side = min(14.0, max(4.0, 0.35 * k + 2))
    figure = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 40:
        axes.set_xticks(range(k), names, rotation=90, fontsize=8)
        axes.set_yticks(range(k), names, fontsize=8)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if counts[i, j]:
                        axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                                  color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix: {k} classes present,\ntop-1 {result.top1:.1%}", fontsize=10)
    figure.tight_layout()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _video_encoder_available() -> bool:
    """Whether ``SummaryWriter.add_video`` can encode: it needs ``moviepy.editor`` (moviepy 1.x); without it
    torch prints a note and writes an empty entry."""
    import importlib.util

    if importlib.util.find_spec("moviepy") is None:
        return False
    try:
        from moviepy import editor  # noqa: F401
    except Exception:  # moviepy 2 has no editor module; a broken install raises anything
        return False
    return True


def _tsv_cell(value: object) -> str:
    """A value made safe for one cell of the projector's metadata.tsv (no tabs, no newlines)."""
    return " ".join(str(value).split()) or "-"


def _feature_stats_table(maps: Sequence[FeatureMap]) -> str:
    rows = [
        [_cell(m.layer), _shape(m.shape), f"{m.mean:.4g}", f"{m.std:.4g}", f"{m.zero_fraction:.3f}"]
        for m in maps
    ]
    return markdown_table(["layer", "shape", "mean", "std", "zero fraction"], rows)


def _traced_graph(model: nn.Module, example_input: torch.Tensor) -> Any:
    """``SummaryWriter.add_graph``'s graph proto, traced once: without ``check_trace``'s two extra forwards."""
    from torch.utils.tensorboard import _pytorch_graph as tb_graph

    needed = ("_set_model_to_eval", "parse", "GraphDef", "VersionDef", "RunMetadata", "StepStats", "DeviceStepStats")
    if not all(hasattr(tb_graph, name) for name in needed):  # torch's private layout changed: its own path
        return tb_graph.graph(model, example_input)
    with tb_graph._set_model_to_eval(model):
        trace = torch.jit.trace(model, example_input, strict=True, check_trace=False)
        graph = trace.graph
        torch._C._jit_pass_inline(graph)
    nodes = tb_graph.parse(graph, trace, example_input)
    stats = tb_graph.RunMetadata(step_stats=tb_graph.StepStats(
        dev_stats=[tb_graph.DeviceStepStats(device="/device:CPU:0")]))
    return tb_graph.GraphDef(node=nodes, versions=tb_graph.VersionDef(producer=22)), stats


@contextlib.contextmanager
def _quiet_tracing():
    """Silence what ``add_graph`` prints and warns while tracing (the failure reason is kept)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        yield
