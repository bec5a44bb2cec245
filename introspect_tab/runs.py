"""The runs of a log dir that introspect wrote, read without torch: their records and their input images.

A run is a folder under the log dir holding ``introspect.json`` (written by the run scope,
``introspect.run_scope``: a report, a dataset audit or a watched training run, its ``kind``), or, for
a run made by an older introspect, an event file with a ``run/info`` text and no record: such a run is
listed with its ``run/info`` model and a one-line note to run it again. Only these runs are offered, by
their name relative to the log dir; the browser names a run, never a file. How a run's model is loaded
again is decided here, from its record alone: the model as named, and the weights it was run with (an
enum name, or the absolute path of the file, loaded with ``weights_only=True``); random weights get a
fresh random initialisation, and the run says so. A run whose task the tab cannot explain (a video or
optical-flow model) or whose model lives elsewhere (a watched training run) says why, in the record's
``not_explorable`` (the task registry's words).
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RUN_RECORD_FILE", "OLDER_RUN_NOTE", "Run", "RunCatalogue"]

RUN_RECORD_FILE = "introspect.json"  # the name introspect.tensorboard.reporter writes
MAX_DEPTH = 4  # folders below the log dir searched for runs
MAX_RECORD_BYTES = 1 << 20
MAX_PHOTO_BYTES = 32 << 20  # a recorded photo shown as a thumbnail (an audit's images)
MAX_PHOTO_PIXELS = 40_000_000
THUMBNAIL_SIDE = 512
OLDER_RUN_NOTE = "made by an older introspect (no introspect.json beside its events): run it again to explore it"
_INFO_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*(.*?)\s*\|$")


@dataclass(frozen=True)
class Run:
    """One run of the log dir: its name (relative to the log dir), folder and record."""

    name: str
    folder: Path
    record: dict[str, Any]

    older: bool = False  # made by an older introspect: ``record`` holds its ``run/info`` lines, no introspect.json

    @property
    def kind(self) -> str:
        """What made the run: ``report``, ``audit``, ``watch`` (its record's ``kind``), or ``older``."""
        if self.older:
            return "older"
        return str(self.record.get("kind") or "report")  # format 1 records: only reports wrote them

    @property
    def not_explorable(self) -> str | None:
        """Why the tab cannot compute maps for this run whatever its weights (an older run, a task the tab
        cannot explain, a watched training run), or None."""
        if self.older:
            return OLDER_RUN_NOTE
        reason = self.record.get("not_explorable")
        if isinstance(reason, str) and reason:
            return reason
        if "not_explorable" not in self.record and self.record.get("task") is not None:
            return _task_reason(str(self.record["task"]))  # a format-1 record: ask the task registry
        return None

    @property
    def load(self) -> dict[str, Any] | None:
        """How to load the run's model again (``load_model``'s arguments), or None where it cannot be."""
        record = self.record
        model, weights, path = record.get("model"), str(record.get("weights") or ""), record.get("weights_path")
        if self.not_explorable is not None:
            return None
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
        """Whether the tab's maps come from the run's own weights, in words (or why it has none)."""
        record = self.record
        reason = self.not_explorable
        if reason is not None:
            return f"cannot be explored in this tab: {reason}"
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
        exists and the record names every image of the run (``names``: those :meth:`RunCatalogue.images` found)."""
        files = self.record.get("image_files")
        if not isinstance(files, dict) or not set(names) <= set(files) or not isinstance(files.get(name), str):
            return None
        path = Path(files[name])
        return path if path.is_absolute() and path.is_file() else None

    def summary(self) -> dict[str, Any]:
        """What the tab lists for the run."""
        record = self.record
        summary = {"name": self.name, "kind": self.kind, "model": record.get("model"),
                   "weights": record.get("weights"), "weights_from": record.get("weights_from"),
                   "task": record.get("task"), "input_size": record.get("input_size"),
                   "cam_layer": record.get("cam_layer"), "cam_methods": record.get("cam_methods") or [],
                   "reloadable": self.load is not None, "note": self.note, "status": record.get("status")}
        if self.kind == "audit" and not _photo_paths(record):
            summary["images_note"] = ("the audit recorded no paths of its images (an audit finished by an older "
                                      "introspect, or one that showed none): upload a photo")
        return summary


def _by_name(model: str) -> bool:
    """Whether the tab may load ``model`` again: a torchvision name or ``timm:NAME`` (never ``hf:`` folders, nor
    ``package.module:callable`` import paths, whose code the tab does not run)."""
    prefix, colon, rest = model.partition(":")
    if colon:
        return prefix == "timm" and bool(rest)
    return bool(model) and model.replace("_", "").isalnum()


def _task_reason(task: str) -> str | None:
    """Why the tab cannot explain a ``task``'s models, in the task registry's words (imports torch)."""
    from introspect.tasks import TASKS
    from introspect.tasks.base import NEEDS

    found = TASKS.get(task)
    return found.skip_reason("tab", NEEDS["tab"]) if found is not None else None


def _photo_paths(record: dict[str, Any]) -> dict[str, str]:
    files = record.get("image_files")
    if not isinstance(files, dict):
        return {}
    return {str(k): v for k, v in files.items() if isinstance(v, str) and Path(v).is_absolute()}


def _thumbnail(path: Path) -> bytes | None:
    """A recorded photo as a PNG at most ``THUMBNAIL_SIDE`` pixels a side (bounded, PIL's bomb guard), or None."""
    from PIL import Image, ImageOps

    try:
        if not path.is_file() or path.stat().st_size > MAX_PHOTO_BYTES:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PHOTO_PIXELS:
                    return None
                picture = ImageOps.exif_transpose(image).convert("RGB")
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception:  # noqa: BLE001 - a photo that moved, or that PIL cannot read, is left out
        return None


def _event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and "tfevents" in p.name)


def _stamp(paths: list[Path]) -> tuple:
    stamp = []
    for p in paths:
        try:
            stat = p.stat()
        except OSError:
            continue
        stamp.append((str(p), stat.st_size, stat.st_mtime_ns))
    return tuple(stamp)


def _info_lines(markdown: str) -> dict[str, str]:
    """``run/info``'s key/value rows (its Markdown table), by key."""
    rows = {}
    for line in markdown.splitlines():
        match = _INFO_ROW.match(line.strip())
        if match and match.group(1) not in ("key", "---") and not set(match.group(1)) <= {"-", ":"}:
            rows[match.group(1)] = match.group(2)
    return rows


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
        self._older: dict[str, tuple[tuple, dict[str, str] | None]] = {}

    def runs(self) -> dict[str, Run]:
        """Every run under the log dir (searched ``MAX_DEPTH`` folders deep, links not followed), by name:
        folders with ``introspect.json``, and folders whose events hold a ``run/info`` text and no record."""
        found: dict[str, Run] = {}
        if self.logdir is None or not self.logdir.is_dir():
            return found
        for folder, subfolders, files in os.walk(self.logdir, followlinks=False):
            depth = len(Path(folder).relative_to(self.logdir).parts)
            if depth >= MAX_DEPTH:
                subfolders[:] = []
            subfolders.sort()
            name = Path(folder).relative_to(self.logdir).as_posix()
            if RUN_RECORD_FILE in files:
                record = _read_record(Path(folder) / RUN_RECORD_FILE)
                if record is not None:
                    found[name] = Run(name=name, folder=Path(folder), record=record)
            elif any("tfevents" in f for f in files):
                info = self._older_info(name, Path(folder))
                if info is not None:
                    size = str(info.get("input size") or "")
                    record = {"model": info.get("model"), "weights": info.get("weights"),
                              "weights_from": info.get("weights from"),
                              "task": str(info["task"]).partition(":")[0] if info.get("task") else None,
                              "input_size": int(size) if size.isdigit() else None, "status": info.get("status")}
                    found[name] = Run(name=name, folder=Path(folder), record=record, older=True)
        return found

    def _older_info(self, name: str, folder: Path) -> dict[str, str] | None:
        """The ``run/info`` rows of a folder's events (None: it has none), cached while its files stay the same."""
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        events = _event_files(folder)
        stamp = _stamp(events)
        with self._lock:
            cached = self._older.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        info: dict[str, str] | None = None
        for path in events:
            try:
                for event in LegacyEventFileLoader(str(path)).Load():
                    for value in event.summary.value:
                        if value.tag == "run/info" and value.HasField("tensor") and value.tensor.string_val:
                            info = _info_lines(value.tensor.string_val[0].decode("utf-8", "replace"))
            except Exception:  # noqa: BLE001 - a truncated or foreign event file: not an introspect run
                continue
        with self._lock:
            self._older[name] = (stamp, info)
        return info

    def run(self, name: str) -> Run | None:
        """The run called ``name``, or None: only a name from :meth:`runs` is ever taken."""
        return self.runs().get(name)

    def images(self, run: Run) -> dict[str, bytes]:
        """The run's inputs as the model saw them (``input/<name>`` image summaries), or where it wrote none
        (an audit) the photos its record names (thumbnails): name -> encoded PNG."""
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        events = _event_files(run.folder)
        photos = {} if run.older else _photo_paths(run.record)
        stamp = _stamp(events) + _stamp([Path(p) for p in photos.values()])
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
        if not images:
            for name, photo in photos.items():
                thumbnail = _thumbnail(Path(photo))
                if thumbnail is not None:
                    images[name] = thumbnail
        with self._lock:
            self._images[run.name] = (stamp, images)
        return images
