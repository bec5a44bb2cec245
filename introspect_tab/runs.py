"""The runs of a log dir that introspect wrote, read without torch: their records and their input images.

A run is a folder under the log dir holding ``introspect.json`` (written by
``introspect.tensorboard.Reporter.run_record``). Only these runs are offered, by their name relative to
the log dir; the browser names a run, never a file. How a run's model is loaded again is decided
here, from its record alone: the model as named, and the weights it was run with (an enum name, or
the absolute path of the file, loaded with ``weights_only=True``); random weights get a fresh random
initialisation, and the run says so.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RUN_RECORD_FILE", "Run", "RunCatalogue"]

RUN_RECORD_FILE = "introspect.json"  # the name introspect.tensorboard.reporter writes
MAX_DEPTH = 4  # folders below the log dir searched for runs
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True)
class Run:
    """One run of the log dir: its name (relative to the log dir), folder and record."""

    name: str
    folder: Path
    record: dict[str, Any]

    @property
    def load(self) -> dict[str, Any] | None:
        """How to load the run's model again (``load_model``'s arguments), or None where it cannot be."""
        record = self.record
        model, weights, path = record.get("model"), str(record.get("weights") or ""), record.get("weights_path")
        if not isinstance(model, str) or not _by_name(model) or weights == "as given":
            return None
        if path:
            if not Path(path).is_file():
                return None
            weights = str(path)
        elif weights == "random":
            weights = "none"
        elif not weights.isidentifier():  # an enum name such as IMAGENET1K_V1; never a file named in the record
            return None
        size = record.get("input_size")
        if size is not None and not isinstance(size, int):
            return None
        categories = record.get("categories")
        return {"model": model, "weights": weights, "input_size": size,
                "device": record.get("device") or "cpu",
                "categories": [str(c) for c in categories] if isinstance(categories, list) else None}

    @property
    def note(self) -> str:
        """Whether the tab's maps come from the run's own weights, in words."""
        record = self.record
        model, weights, path = str(record.get("model") or ""), str(record.get("weights") or ""), record.get("weights_path")
        if not _by_name(model) or weights == "as given":
            return ("cannot be loaded again here: the model was given as a module, a Hugging Face folder or an "
                    "import path (the tab runs no code a run names); run a torchvision or timm model by name")
        if path and not Path(path).is_file():
            return f"cannot be loaded again: its weights file {path} is gone; put it back there"
        if weights == "random":
            return "random weights: the run's cannot be had again, the tab uses a fresh random initialisation"
        if not path and not weights.isidentifier():
            return f"cannot be loaded again: its weights {weights!r} name no file path or torchvision enum"
        if path:
            return f"weights from {path}"
        return f"weights {weights}"

    def image_file(self, name: str, names: Any) -> Path | None:
        """The photo the run's input ``name`` was read from (its record's ``image_files``), where it still
        exists and the record's names are the run's own (``names``: the ``input/`` images found)."""
        files = self.record.get("image_files")
        if not isinstance(files, dict) or set(files) != set(names) or not isinstance(files.get(name), str):
            return None
        path = Path(files[name])
        return path if path.is_absolute() and path.is_file() else None

    def summary(self) -> dict[str, Any]:
        """What the tab lists for the run."""
        record = self.record
        return {"name": self.name, "model": record.get("model"), "weights": record.get("weights"),
                "weights_from": record.get("weights_from"), "task": record.get("task"),
                "input_size": record.get("input_size"), "cam_layer": record.get("cam_layer"),
                "cam_methods": record.get("cam_methods") or [], "reloadable": self.load is not None,
                "note": self.note}


def _by_name(model: str) -> bool:
    """Whether the tab may load ``model`` again: a torchvision name or ``timm:NAME`` (never ``hf:`` folders, nor
    ``package.module:callable`` import paths, whose code the tab does not run)."""
    prefix, colon, rest = model.partition(":")
    if colon:
        return prefix == "timm" and bool(rest)
    return bool(model) and model.replace("_", "").isalnum()


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class RunCatalogue:
    """The introspect runs under one log dir, and each run's input images (``input/<name>``), cached."""

    def __init__(self, logdir: str | os.PathLike | None) -> None:
        self.logdir = Path(logdir).resolve() if logdir else None
        self._lock = threading.Lock()
        self._images: dict[str, tuple[tuple, dict[str, bytes]]] = {}

    def runs(self) -> dict[str, Run]:
        """Every run under the log dir (searched ``MAX_DEPTH`` folders deep, links not followed), by name."""
        found: dict[str, Run] = {}
        if self.logdir is None or not self.logdir.is_dir():
            return found
        for folder, subfolders, files in os.walk(self.logdir, followlinks=False):
            depth = len(Path(folder).relative_to(self.logdir).parts)
            if depth >= MAX_DEPTH:
                subfolders[:] = []
            subfolders.sort()
            if RUN_RECORD_FILE in files:
                record = _read_record(Path(folder) / RUN_RECORD_FILE)
                if record is not None:
                    name = Path(folder).relative_to(self.logdir).as_posix()
                    found[name] = Run(name=name, folder=Path(folder), record=record)
        return found

    def run(self, name: str) -> Run | None:
        """The run called ``name``, or None: only a name from :meth:`runs` is ever taken."""
        return self.runs().get(name)

    def images(self, run: Run) -> dict[str, bytes]:
        """The run's inputs as the model saw them: ``input/<name>`` image summaries, name -> encoded PNG."""
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        events = sorted(p for p in run.folder.iterdir() if p.is_file() and "tfevents" in p.name)
        stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in events)
        with self._lock:
            cached = self._images.get(run.name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        images: dict[str, bytes] = {}
        for path in events:
            for event in LegacyEventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag.startswith("input/") and value.HasField("image"):
                        images[value.tag[len("input/"):]] = value.image.encoded_image_string
        with self._lock:
            self._images[run.name] = (stamp, images)
        return images
