"""One TensorBoard run: its directory, its event file's lifetime, a full disk, and the primitives.

This is the only module that imports ``tensorboard`` / ``torch.utils.tensorboard``, and it
does so lazily (when a :class:`RunWriter` opens), so importing it stays cheap and works where
only the notebook API is used. It knows no record: :mod:`introspect.tensorboard.layouts`
turns records into the tags written here.

Tags are ``<section>/<rest>``; :attr:`RunWriter.tags` counts the summaries written per
section, for the CLI's "wrote: ..." line.

A flush only hands the queued events to the OS (cheap next to drawing a feature map); the
layouts flush after every record, so an event file left behind by an interrupted or killed
run holds every record written so far: TensorBoard reads events up to the last complete one.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError, ArgumentTypeError, OutputError, StateError

if TYPE_CHECKING:
    from ..records import Histogram

__all__ = ["new_run_dir", "RunWriter"]

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


_THREAD_HOOK_LOCK = threading.Lock()
_THREAD_HOOK_INSTALLED = False


def _quiet_writer_thread() -> None:
    """Keep TensorBoard's writer thread from printing a traceback when the disk is full or gone.

    The thread stores its exception and the next write, flush or close on the main thread raises
    it again, where :class:`RunWriter` turns it into one :class:`OutputError` line. Other threads'
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


class RunWriter:
    """The event file of one TensorBoard run directory, and the summaries it can hold.

    Use it as a context manager: on exit (normal, exception or Ctrl-C) the event
    file is flushed and closed. A full disk or a lost folder is one :class:`OutputError`.
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
    def from_writer(cls, writer: Any):
        """One that writes through an existing ``SummaryWriter`` (ArgumentTypeError, a TypeError, otherwise).

        Closing it closes that writer; leave it open if its owner closes it.
        """
        from torch.utils.tensorboard import SummaryWriter

        if not isinstance(writer, SummaryWriter):
            raise ArgumentTypeError(f"writer is a {type(writer).__name__}: give a "
                                    "torch.utils.tensorboard.SummaryWriter", parameter="writer")
        made = cls.__new__(cls)
        made.run_dir = Path(writer.log_dir)
        made.tags = {}
        made._writer = writer
        return made

    # -- lifetime -------------------------------------------------------------------

    def __enter__(self):
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
            raise StateError(f"{type(self).__name__} for {self.run_dir} is closed: open a new one")
        return self._writer

    def _count(self, tag: str) -> None:
        section = tag.split("/", 1)[0]
        self.tags[section] = self.tags.get(section, 0) + 1

    def _add_summaries(self, tag: str, summaries: Sequence[Any], step: int | None = 0) -> None:
        """Summary protos straight into the event file (no SummaryWriter renaming), counted once as ``tag``."""
        with self._guard():
            writer = self._open_writer()._get_file_writer()
            for summary in summaries:
                writer.add_summary(summary, step)
        self._count(tag)

    # -- primitives -----------------------------------------------------------------

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """A Markdown text summary (TensorBoard's TEXT tab), stored at exactly ``tag``."""
        from torch.utils.tensorboard.summary import text as text_summary

        # SummaryWriter.add_text would store it as "<tag>/text_summary"; keep the tag
        # scheme exact by writing torch's own text proto with the tag put back.
        summary = text_summary(tag, markdown)
        summary.value[0].tag = tag
        self._add_summaries(tag, [summary], step)

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
        self._add_summaries(tag, [Summary(value=[Summary.Value(tag=tag, image=encoded)])], step)

    def scalar(self, tag: str, value: float, step: int = 0) -> None:
        """One number."""
        with self._guard():
            self._open_writer().add_scalar(tag, float(value), global_step=step)
        self._count(tag)

    def histogram(self, tag: str, values: Histogram, step: int = 0) -> None:
        """A :class:`~introspect.records.Histogram` (binned already). An empty one writes nothing."""
        if values.num == 0:  # TensorBoard cannot show an empty histogram
            return
        with self._guard():
            self._open_writer().add_histogram_raw(
                tag, min=values.min, max=values.max, num=values.num, sum=values.sum, sum_squares=values.sum_squares,
                bucket_limits=values.edges[1:].tolist(), bucket_counts=values.counts.tolist(), global_step=step)
        self._count(tag)

    def pr_curve(self, tag: str, tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray,
                 precision: np.ndarray, recall: np.ndarray, step: int = 0) -> None:
        """A precision-recall curve from its counts at each threshold (the PR CURVES tab)."""
        from torch.utils.tensorboard.summary import pr_curve_raw

        self._add_summaries(tag, [pr_curve_raw(tag, tp, fp, tn, fn, precision, recall, num_thresholds=len(tp))],
                            step)

    def projector(self, tag: str, features: np.ndarray, metadata: Sequence[Sequence[object]],
                  metadata_header: Sequence[str], thumbnails: np.ndarray) -> None:
        """Points for the PROJECTOR tab: ``features`` (N, D), one metadata row each, uint8 (N, t, t, 3) thumbnails."""
        rows = [[_tsv_cell(v) for v in row] for row in metadata]
        label_img = torch.from_numpy(thumbnails).permute(0, 3, 1, 2).float() / 255.0
        with self._guard():
            self._open_writer().add_embedding(torch.from_numpy(features), metadata=rows, label_img=label_img,
                                              tag=tag, metadata_header=list(metadata_header))
        self._count(tag)

    def hparams(self, settings: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Settings and headline figures in the HPARAMS tab of this run (not a sub-run, as add_hparams does)."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        self._add_summaries("hparams", hparams(values, dict(metrics)), None)

    @staticmethod
    def can_write_video() -> bool:
        """Whether :meth:`video` can encode: ``add_video`` needs ``moviepy.editor`` (moviepy 1.x); without it
        torch prints a note and writes an empty entry."""
        import importlib.util

        if importlib.util.find_spec("moviepy") is None:
            return False
        try:
            from moviepy import editor  # noqa: F401
        except Exception:  # moviepy 2 has no editor module; a broken install raises anything
            return False
        return True

    def video(self, tag: str, frames: np.ndarray, fps: int = 4, step: int = 0) -> bool:
        """uint8 (T, H, W, 3) frames as an animated GIF (IMAGES tab); returns False, writing nothing, where
        :meth:`can_write_video` says no."""
        if not self.can_write_video():
            return False
        clip = torch.from_numpy(np.ascontiguousarray(frames))[None].permute(0, 1, 4, 2, 3)  # (1, T, 3, H, W)
        with self._guard():
            self._open_writer().add_video(tag, clip, global_step=step, fps=fps)
        self._count(tag)
        return True

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


def _tsv_cell(value: object) -> str:
    """A value made safe for one cell of the projector's metadata.tsv (no tabs, no newlines)."""
    return " ".join(str(value).split()) or "-"


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
