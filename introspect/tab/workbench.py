"""Warm models and maps on demand for the TensorBoard tab, through the library's own calls.

A :class:`Workbench` keeps the models of the runs the tab has used loaded (least recently used
dropped first, bounded by their bytes and their count), serves one request at a time per model (a
lock each), and remembers the last results per model, so choosing another of the top-k classes or
downloading the map computes nothing again. Every map is :func:`introspect.cam` on the warm model:
the same engine, tasks and targets as the command line, and the model left as found.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["Explanation", "MapView", "Workbench", "reload_spec"]

DEFAULT_MAX_BYTES = 2 << 30  # weights and buffers of the warm models together
DEFAULT_MAX_MODELS = 4
RESULTS_PER_MODEL = 16


def reload_spec(load: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`introspect.load_model` for a run's load description.

    Args:
        load: ``model``, ``weights`` (``none``, an enum name or a file's path), ``input_size``,
            ``categories`` (or None) and ``device``, as the tab's run catalogue derives them from the
            run's record.
    """
    import torch

    device = str(load.get("device") or "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    categories = load.get("categories")
    return {"model": str(load["model"]), "weights": str(load["weights"]), "device": device,
            "input_size": load.get("input_size"), "categories": tuple(categories) if categories else None}


@dataclass(frozen=True)
class MapView:
    """One method's map of the chosen subject: the normalised heatmap and its overlay on the input."""

    method: str
    layer: str
    subject: dict[str, Any]
    heatmap: np.ndarray  # float32 (H, W)
    overlay: np.ndarray  # uint8 (H, W, 3)

    @property
    def low(self) -> float:
        """The heatmap's minimum."""
        return float(self.heatmap.min())

    @property
    def high(self) -> float:
        """The heatmap's maximum."""
        return float(self.heatmap.max())


@dataclass(frozen=True)
class Explanation:
    """What one request computed: the subjects to choose from, and each method's map of the chosen one."""

    subjects: tuple[dict[str, Any], ...]
    chosen: int
    maps: tuple[MapView, ...]
    seconds: float
    cached: bool
    warnings: tuple[str, ...] = ()


def _subject(subject: Any) -> dict[str, Any]:
    return {"kind": subject.kind, "index": int(subject.index), "name": subject.name, "score": float(subject.score),
            "caption": subject.caption, "box": list(subject.box) if subject.box is not None else None}


@dataclass
class _Warm:
    """One run's model in memory, its lock, what it is doing and its last results."""

    load: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: Any = None
    nbytes: int = 0
    state: str = "idle"
    results: OrderedDict = field(default_factory=OrderedDict)


def _nbytes(module: Any) -> int:
    import itertools

    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


class Workbench:
    """The warm models of the tab, one lock each, bounded by memory (least recently used goes first)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_models: int = DEFAULT_MAX_MODELS) -> None:
        self.max_bytes = max_bytes
        self.max_models = max_models
        self._guard = threading.Lock()
        self._models: OrderedDict[str, _Warm] = OrderedDict()

    # -- the warm models -----------------------------------------------------------------------

    def _entry(self, key: str, load: Mapping[str, Any]) -> _Warm:
        spec = dict(load)
        with self._guard:
            entry = self._models.get(key)
            if entry is None or entry.load != spec:  # a new run, or its record changed
                entry = _Warm(load=spec)
                self._models[key] = entry
            self._models.move_to_end(key)
            return entry

    def _evict(self, keep: str) -> None:
        with self._guard:
            while len(self._models) > 1 and (
                    len(self._models) > self.max_models
                    or sum(e.nbytes for e in self._models.values()) > self.max_bytes):
                oldest = next(k for k in self._models if k != keep)
                del self._models[oldest]  # a request still running on it keeps its own reference

    def _loaded(self, key: str, entry: _Warm) -> Any:
        """The entry's model, loaded on first use (the caller holds ``entry.lock``)."""
        if entry.loaded is None:
            from ..models import load_model

            entry.state = "loading the model"
            try:
                entry.loaded = load_model(**reload_spec(entry.load))
            except BaseException:
                with self._guard:
                    if self._models.get(key) is entry:
                        del self._models[key]
                raise
            entry.nbytes = _nbytes(entry.loaded.model)
            self._evict(keep=key)
        return entry.loaded

    def loaded(self, key: str, load: Mapping[str, Any]) -> Any:
        """The warm :class:`~introspect.models.LoadedModel` of run ``key`` (loaded now if it is not)."""
        entry = self._entry(key, load)
        with entry.lock:
            try:
                return self._loaded(key, entry)
            finally:
                entry.state = "idle"

    def status(self, key: str) -> dict[str, Any]:
        """Whether run ``key``'s model is warm and what it is doing (``idle``, ``loading the model``, ``computing``)."""
        with self._guard:
            entry = self._models.get(key)
        if entry is None:
            return {"warm": False, "state": "idle"}
        return {"warm": entry.loaded is not None, "state": entry.state}

    def warm_keys(self) -> list[str]:
        """The runs whose models are loaded, least recently used first."""
        with self._guard:
            return [k for k, e in self._models.items() if e.loaded is not None]

    # -- what the tab asks -----------------------------------------------------------------------

    def describe(self, key: str, load: Mapping[str, Any]) -> dict[str, Any]:
        """The model's choices: its task, layers (the CAM layer first, then the stages, then every module),
        CAM methods and class names."""
        from ..engine.cam import list_cam_methods
        from ..layers import layer_names
        from ..tasks import TASKS

        loaded = self.loaded(key, load)
        task = TASKS[loaded.task]
        try:
            cam_layer = task.cam_layer_name(loaded)
        except UsageError:
            cam_layer = None
        try:
            stages = list(task.feature_layer_names(loaded))
        except UsageError:
            stages = []
        if cam_layer is not None and cam_layer not in stages:
            stages.append(cam_layer)
        return {"task": loaded.task, "cam_layer": cam_layer, "stages": stages,
                "layers": layer_names(loaded.model), "methods": list_cam_methods(),
                "categories": list(loaded.categories), "weights": loaded.weights,
                "weights_from": loaded.weights_source, "input_size": loaded.input_size}

    def explain(self, key: str, load: Mapping[str, Any], image: Any, image_key: str, *,
                methods: Sequence[str], layer: str | None = None, target: str | None = None, topk: int = 5,
                pick: int = 0) -> Explanation:
        """Each method's map of one subject of ``image``, computed by :func:`introspect.cam` on the warm model.

        Args:
            key: the run's name (the cache key of its model).
            load: how to load the run's model (see :func:`reload_spec`).
            image: a PIL image (the run's input as the model saw it, or an upload).
            image_key: a name for ``image`` that changes when it does (the results are kept under it).
            methods: CAM method names.
            layer: the layer to explain (None: the task's own choice).
            target: a class by name or index (None: the top-k subjects: classes, detections, classes present).
            topk: how many subjects to list when ``target`` is None.
            pick: which of the listed subjects to show (0: the first).

        Raises:
            UsageError: an unknown method, layer, class, or a subject that is not there (``pick``).
        """
        from ..analyzers.cam import cam

        entry = self._entry(key, load)
        started = time.perf_counter()
        request = (image_key, tuple(methods), layer, target, topk if target is None else 0)
        with entry.lock:
            try:
                loaded = self._loaded(key, entry)
                results = entry.results.get(request)
                cached = results is not None
                if results is None:
                    entry.state = "computing"
                    chosen_targets = None if target is None else [int(target) if target.isdigit() else target]
                    results = cam(loaded, image, list(methods), layer=layer, targets=chosen_targets, topk=topk)
                    entry.results[request] = results
                    while len(entry.results) > RESULTS_PER_MODEL:
                        entry.results.popitem(last=False)
                entry.results.move_to_end(request)
                first = results[0].maps
                if not first:
                    notes = "; ".join(results[0].warnings) or "nothing to explain"
                    raise UsageError(f"no map for this image: {notes}", parameter="target")
                if not 0 <= pick < len(first):
                    raise UsageError(f"subject={pick} is not one of the {len(first)} listed: pick 0 to "
                                     f"{len(first) - 1}", parameter="subject")
                maps = tuple(MapView(method=r.method, layer=str(r.layer), subject=_subject(r.maps[pick].subject),
                                     heatmap=np.asarray(r.maps[pick].heatmap, dtype=np.float32),
                                     overlay=np.asarray(r.maps[pick].image)) for r in results)
            finally:
                entry.state = "idle"
        notes = tuple(dict.fromkeys(w for r in results for w in r.warnings))
        return Explanation(subjects=tuple(_subject(m.subject) for m in first), chosen=pick, maps=maps,
                           seconds=time.perf_counter() - started, cached=cached, warnings=notes)
