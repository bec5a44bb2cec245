"""The one scope every run goes through: however the run ends, ``run/info`` says how, and the writer is closed.

:func:`recorded_run` wraps the body of a run whose folder and :class:`~introspect.tensorboard.Reporter`
exist: the per-photo report (:func:`introspect.report`), a task's own pipeline, and the dataset audit
(``--dataset``). On success, on any exception and on Ctrl-C it writes ``run/info`` (the caller's lines,
then the versions, the command line and the status: ``completed``, ``failed: <error>`` or ``interrupted
(Ctrl-C)``, with the seconds taken), lists the run's warnings once each, and closes the event file, so
what was written before a failure stays readable. The exception itself goes on to the caller.

:func:`run_record` makes the run's machine-readable record (``introspect.json``, which the TensorBoard
tab reads to list the run and load its model again); the scope writes it when it starts and again when
the run ends (with its status), so a report, an audit and a watched training run all carry one.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import interrupted_by_user

if TYPE_CHECKING:
    from .models import LoadedModel
    from .tensorboard import Reporter

__all__ = ["RunEnd", "recorded_run", "versions", "run_record", "image_files", "audit_facts", "RUN_KINDS",
           "command_line"]

#: What made a run, as ``introspect.json`` says (``kind``).
RUN_KINDS = ("report", "audit", "watch")
RECORD_FORMAT = 2
MAX_RECORDED_IMAGES = 32  # photo paths a record keeps (an audit's galleries and sample: the first ones)


def run_record(kind: str, loaded: LoadedModel | None = None, **facts: object) -> dict[str, object]:
    """The machine-readable facts of a run (``introspect.json``): what made it (``kind``, one of
    :data:`RUN_KINDS`), the model as named, the weights (an enum name, ``random``, or the file's
    absolute path), the task, input size, device, class names, and ``not_explorable``: why the
    TensorBoard tab cannot compute maps for it (the task's own words, :data:`~introspect.tasks.base.NEEDS`
    ``["tab"]``), or None. ``facts`` add to or override these (``cam_layer``, ``cam_methods``,
    ``image_files``: each input's tag name -> its photo's absolute path)."""
    record: dict[str, object] = {"format": RECORD_FORMAT, "kind": kind, "model": None, "weights": None,
                                 "weights_from": None, "weights_path": None, "task": None, "input_size": None,
                                 "device": None, "cam_layer": None, "cam_methods": [], "categories": [],
                                 "image_files": {}, "not_explorable": None}
    if loaded is not None:
        from .tasks import TASKS
        from .tasks.base import NEEDS

        record.update(model=loaded.name, weights=loaded.weights, weights_from=loaded.weights_source,
                      weights_path=loaded.weights_path, task=loaded.task, input_size=loaded.input_size,
                      device=str(loaded.device), categories=list(loaded.categories),
                      not_explorable=TASKS[loaded.task].skip_reason("tab", NEEDS["tab"]))
    record.update(facts)
    return record


def image_files(paths: Sequence[object], root: str | Path | None = None, limit: int | None = None) -> dict[str, str]:
    """Each photo's tag name (as the inputs are named, ``tag_names``) -> its absolute path, for a record's
    ``image_files``: ``paths`` (files or folders; relative ones under ``root``), the first ``limit`` of them
    (None: all). Nothing where an entry is not a path or cannot be listed."""
    from .errors import ImageError
    from .images import expand_paths, tag_names

    if not all(isinstance(p, (str, Path)) for p in paths):
        return {}
    given = [Path(root) / p if root is not None else Path(p) for p in paths]
    try:
        files = list(dict.fromkeys(f for f, _ in expand_paths(given)))[:limit]
    except (ImageError, OSError):
        return {}
    return {name: str(f.resolve()) for name, f in zip(tag_names([f.stem for f in files]), files)}


def versions() -> str:
    """The Python, torch and torchvision versions, as ``run/info`` writes them."""
    import torch
    import torchvision

    return f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}"


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process as one a user can paste into a shell and run again
    (``python -m introspect vgg11 --image 'my photos/cat.png'``): ``shlex.join`` of ``sys.argv``, with
    introspect's ``__main__.py`` said as ``python -m introspect`` and a script as ``python SCRIPT``."""
    import shlex
    from pathlib import Path

    args = list(sys.argv if argv is None else argv)
    if not args:
        return ""
    head = Path(args[0])
    if head.name == "__main__.py" and head.parent.name == "introspect":
        command = ["python", "-m", "introspect"]
    elif head.suffix == ".py":
        command = ["python", args[0]]
    else:
        command = [args[0]]
    return shlex.join(command + args[1:])


def audit_facts(result: Any, dataset: str | Path) -> dict[str, object]:
    """What an audit adds to its :func:`run_record`: its CAM layer and methods, and the photos it shows
    (its galleries', then its projector sample's; the first :data:`MAX_RECORDED_IMAGES`), by tag name."""
    audited = [item.file for gallery in result.galleries for item in gallery.items]
    audited += list(result.sample.files) if result.sample is not None else []
    return {"cam_layer": result.settings.get("layer"), "cam_methods": list(result.methods),
            "image_files": image_files(audited, root=dataset, limit=MAX_RECORDED_IMAGES)}


@dataclass
class RunEnd:
    """How a run ended; :func:`recorded_run` yields it and fills it in as the run ends.

    Attributes:
        status: ``"running"`` inside the scope; then ``"completed in 1.2 s"``, ``"failed: Error: why in 1.2 s"``
            or ``"interrupted (Ctrl-C) in 1.2 s"`` (the status line of ``run/info``).
        warnings: the run's warning messages, each once, in the order they came.
        seconds: the time from ``started`` to the end.
        tags: summaries written per section (``Reporter.tags``).
    """

    status: str = "running"
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tags: dict[str, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """Whether the run ended without an exception."""
        return self.status.startswith("completed")


def _message(warning: Any) -> str:
    """A recorded warning (``warnings.catch_warnings(record=True)``) or a plain string, as text."""
    return str(getattr(warning, "message", warning))


@contextmanager
def recorded_run(reporter: Reporter, info: dict[str, object], into: Any = None,
                 caught: Iterable[Any] = (), started: float | None = None,
                 record: dict[str, object] | None = None) -> Iterator[RunEnd]:
    """Run the body; however it ends, write ``run/info`` with the status, warnings and time, then close.

    Args:
        reporter: the run's open reporter; closed when the scope ends.
        info: the lines of ``run/info`` (key -> value). Read when the run ends, so the body may add to it
            (the audit adds its figures); the scope adds ``versions``, ``command`` and ``status``.
        into: an object whose ``warnings``, ``seconds`` and ``tags`` are set as well when the run ends
            (a :class:`~introspect.report.RunSummary`), or None.
        caught: the run's warnings: the list ``warnings.catch_warnings(record=True)`` fills (read at the end)
            or message strings.
        started: ``time.perf_counter()`` when the run started (default: now).
        record: the run's :func:`run_record`, written as ``introspect.json`` now and again when the run ends
            (with its ``status``), so the body may add to it (the audit adds its images); None: none.

    Yields:
        A :class:`RunEnd`, filled in when the body is done (also on failure and Ctrl-C).

    What was written before a failure or Ctrl-C stays readable, and ``run/info`` says how the run ended;
    the exception (KeyboardInterrupt included) is raised again.
    """
    started = time.perf_counter() if started is None else started
    end = RunEnd()
    status = "failed"
    if record is not None:
        reporter.run_record({**record, "status": "running"})
    try:
        yield end
        status = "completed"
    except BaseException as exc:
        status = "interrupted (Ctrl-C)" if interrupted_by_user(exc) else f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        end.warnings = list(dict.fromkeys(_message(w) for w in caught))
        end.seconds = time.perf_counter() - started
        end.status = f"{status} in {end.seconds:.1f} s"
        info["versions"] = versions()
        info["command"] = command_line()
        info["status"] = end.status
        from .errors import worded

        try:
            reporter.run_info({key: worded(value) if isinstance(value, str) else value for key, value in info.items()},
                              [worded(message) for message in end.warnings])
            if record is not None:
                reporter.run_record({**record, "status": end.status})
        finally:
            end.tags = dict(reporter.tags)
            if into is not None:
                into.warnings, into.seconds, into.tags = end.warnings, end.seconds, dict(end.tags)
            reporter.close()
