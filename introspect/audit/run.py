"""The audit loop: a dataset streamed through the model once, every batch folded into fixed-size aggregates.

Each batch is one forward pass and one batched backward (:func:`introspect.engine.forward.run_forward`,
:func:`introspect.engine.cam.cam_maps`) for every method; its per-image rows go to the Parquet
table, its figures into :class:`~introspect.audit.aggregate.Aggregates`, and nothing else of it is
kept. With ``out_dir`` the run can be resumed: every ``checkpoint_every`` batches (and on Ctrl-C) the
rows are written as a closed Parquet part and then a state file (finished batches + aggregates) is
replaced atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.cam import cam_maps, needs_layer_gradient, parse_cam_methods
from ..errors import (ArgumentError, IntrospectWarning, OutputError, UnknownMethodError, UsageError,
                      interrupted_by_user)
from ..engine.forward import run_forward
from ..hooks import first_tensor, inspecting
from ..layers import pick_cam_layer
from ..loaded import LoadedModel, unwrap
from ..models import load_model
from ..records import AuditResult, AuditSample, Gallery, GalleryItem, MeanCam
from ..engine.targets import TrueLabel
from ..tasks import TASKS
from .aggregate import Aggregates, batch_stats, sample_indices
from .boxes import BoxTable, input_geometry, map_boxes, read_boxes
from .dataset import AuditImages, DatasetIndex, make_loader, scan_dataset
from .distributed import World, all_reduce_sum, barrier, gather_to_zero, init_world, shard
from .detection import DetectionAudit
from .kinds import AuditKind
from .segmentation import SegmentationAudit
from .figures import confusion_figure, draw_entry, entry_caption, entry_pair, gallery_image, mean_cam_panel, pr_curve
from .table import merge_parts, table_rows, table_schema, write_part

__all__ = ["AuditOptions", "audit", "prepare_audit", "PreparedAudit", "check_auditable", "AUDIT_KINDS",
           "ClassifierAudit", "PROTOCOL", "ACCURACY_PROTOCOL"]

STATE_VERSION = 1


@dataclass(frozen=True)
class AuditOptions:
    """Settings of a dataset audit (the one copy of each default).

    Attributes:
        methods: CAM methods, a tuple or "gradcam,layercam". Each image's maps explain its label
            (the top-1 prediction when it has none).
        layer: CAM target layer (None: the model family's default).
        batch_size: images per forward pass.
        num_workers: DataLoader processes that decode images (0: in the main process).
        boxes: COCO JSON, a folder of Pascal VOC XML files or a CSV of boxes (None: no pointing game).
        tolerance: pointing-game tolerance in input pixels (TorchRay: 15).
        sanity: run the model-parameter randomisation check on ``sanity_samples`` images.
        sanity_steps: cumulative randomisation steps (layer groups from the head down).
        gallery_size: images in each gallery (most confidently wrong; lowest energy in box).
        map_size: side of the per-class mean CAMs.
        projector_size: images in the projector sample.
        max_classes: classes that get a mean-CAM image and a precision-recall curve (most images first).
        checkpoint_every: batches between saved states (with out_dir).
        progress: a tqdm bar on rank 0.
        masks: segmentation: the folder of mask PNGs (VOC layout: ``<image stem>.png``, pixel = class index,
            255 = ignore).
        score_threshold: detection: the lowest score of a detection that is explained (CAM), counted as found
            or as a false positive in the galleries.
        min_score: detection: the lowest score kept for mAP (torchvision's ``box_score_thresh``; the detector's
            own cut-off is lowered to it where higher).
        max_explained: detection: detections explained per image (best first, scoring ``score_threshold`` or more).
        iou_threshold: detection: the IoU at which a detection matches a ground-truth box (table, CAM figures,
            galleries; mAP takes COCO's thresholds).
    """

    methods: tuple[str, ...] | str = ("gradcam",)
    layer: str | None = None
    batch_size: int = 32
    num_workers: int = 2
    boxes: str | Path | None = None
    tolerance: float = 15.0
    sanity: bool = False
    sanity_samples: int = 32
    sanity_steps: int = 5
    gallery_size: int = 16
    map_size: int = 56
    projector_size: int = 256
    max_classes: int = 20
    checkpoint_every: int = 8
    progress: bool = True
    masks: str | Path | None = None
    score_threshold: float = 0.5
    min_score: float = 0.05
    max_explained: int = 10
    iou_threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(parse_cam_methods(self.methods)))
        for name in ("batch_size", "map_size", "checkpoint_every", "sanity_samples", "sanity_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{name}={value!r} must be a whole number, 1 or more", parameter=name)
        for name in ("num_workers", "gallery_size", "projector_size", "max_classes", "max_explained"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ArgumentError(f"{name}={value!r} must be a whole number, 0 or more", parameter=name)
        for name in ("score_threshold", "min_score", "iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ArgumentError(f"{name}={getattr(self, name)!r} must be from 0 to 1", parameter=name)
        if not self.tolerance >= 0:
            raise ArgumentError(f"tolerance={self.tolerance} must be a distance in pixels, 0 or more",
                                parameter="tolerance")


PROTOCOL = """**Pointing game** (Zhang et al. 2016, TorchRay's rule): for each labelled image with a box of its class
inside the model's input, each method's map of the image's *true* class is computed once (one forward pass,
one batched backward), normalised as pytorch-grad-cam does and upsampled to the input; the image is a *hit*
when the map's maximum lies within {tolerance:g} px (Euclidean) of a box of that class (of any of its boxes when
none carries the class's name). Boxes are given in original pixels and moved through the same resize and centre crop
as the image; boxes cut away by the crop do not count. The **centre baseline** plays the same game with the
input's centre pixel as the peak: a method must beat it to show that it finds objects rather than the middle
of the frame. **Energy in box**: the share of the normalised map's sum that falls inside the boxes (1 = all of
it). Accuracy counts labelled images only; top-5 is the label among the five most probable classes."""

ACCURACY_PROTOCOL = """Accuracy counts labelled images only; top-5 is the label among the five most probable
classes. No image had a box of its class inside the model's input, so there is no pointing game and no energy in
box: give the audit object boxes (COCO JSON, Pascal VOC XML or a CSV file,x0,y0,x1,y1,label) for them."""


def _fingerprint(kind: AuditKind, options: AuditOptions, world: World) -> dict:
    return {"version": STATE_VERSION, "images": len(kind.index), "world": world.size,
            "batch_size": options.batch_size, "methods": list(options.methods), "layer": kind.layer,
            **kind.fingerprint()}


@dataclass
class _Store:
    """Where a rank keeps its resumable state and table parts."""

    folder: Path
    rank: int
    parts: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.folder / f"state-rank{self.rank}.pt"

    @property
    def tables(self) -> Path:
        return self.folder / "table"

    def next_part(self) -> Path:
        return self.tables / f"rank{self.rank}-part{len(self.parts):05d}.parquet"


def _oserror(path: Path, error: OSError, kept: str) -> OutputError:
    reason = error.strerror or str(error)
    return OutputError(f"cannot write {path} ({reason}); {kept}")


def _un_normalise(transform) -> tuple[torch.Tensor, torch.Tensor]:
    from ..loaded import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(list(getattr(transform, "mean", IMAGENET_MEAN)), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(list(getattr(transform, "std", IMAGENET_STD)), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


@dataclass(frozen=True)
class PreparedAudit:
    """A dataset read and checked for a model (:func:`prepare_audit`): what :func:`audit` runs, so that a caller
    can refuse bad input before it creates a run folder."""

    module: nn.Module
    loaded: LoadedModel
    dataset: Path
    options: AuditOptions
    kind: AuditKind


def prepare_audit(model: nn.Module | LoadedModel, dataset: str | Path,
                  options: AuditOptions = AuditOptions()) -> PreparedAudit:
    """Check that ``model`` can be audited with ``options`` and read ``dataset`` and its ground truth (boxes,
    masks), before anything is written: every bad input is a one-line :class:`UsageError` here.

    Returns:
        A :class:`PreparedAudit` for :func:`audit`.
    """
    module, loaded = unwrap(model)
    if loaded is None:
        loaded = load_model(module)
    check_auditable(loaded, options)
    kind = AUDIT_KINDS[TASKS[loaded.task].audit_kind](module, loaded, Path(dataset), options)
    return PreparedAudit(module, loaded, Path(dataset), options, kind)


def audit(
    model: nn.Module | LoadedModel,
    dataset: str | Path | PreparedAudit,
    *,
    options: AuditOptions = AuditOptions(),
    out_dir: str | Path | None = None,
    resume: bool = False,
    world: World | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Any:
    """Audit ``model`` over every image under ``dataset``, as its task audits (``Task.audit_kind``): a classifier's
    accuracy and pointing game, a detector's mAP with a CAM per detection, a segmenter's mIoU and confusion matrix.

    Args:
        model: a module or a :class:`LoadedModel` (its ``transform`` preprocesses, its ``categories`` name
            the classes and the class folders).
        dataset: classifiers: an ImageFolder tree (class folders named by category, WordNet id or index) or a
            flat folder; detectors: the images ``options.boxes`` names; segmenters: the images, whose masks are
            in ``options.masks``; or a :class:`PreparedAudit` (then ``model`` and ``options`` are its own).
        options: :class:`AuditOptions`.
        out_dir: the run folder for the table (``audit.parquet``: a row per image, or per detection) and the
            resumable state (``audit/``); None: nothing is written.
        resume: continue the run in ``out_dir`` where it stopped (same settings and number of processes).
        world: the process group (default: from torchrun's environment variables, or one process).
        on_batch: called after each batch as ``on_batch(batches_done, images_done)`` (this rank's).
    Returns:
        The result record on rank 0 (:class:`AuditResult`, :class:`DetectionAuditResult` or
        :class:`SegmentationAuditResult`; None on the other ranks). The model comes back untouched.

    Raises:
        UsageError: before anything is read or written, a model whose task has no audit (video, optical
            flow) or a method its task cannot run (see :func:`check_auditable`); a bad dataset, ground truth or
            out_dir.
    """
    prepared = dataset if isinstance(dataset, PreparedAudit) else prepare_audit(model, dataset, options)
    own_world = world is None
    world = world or init_world(prepared.loaded.device)
    try:
        return _audit(prepared, out_dir, resume, world, on_batch)
    finally:
        if own_world:
            world.close()


def check_auditable(loaded: LoadedModel, options: AuditOptions = AuditOptions()) -> None:
    """Refuse a model the audit cannot take, before anything is read or written.

    What a task can audit is on its registry entry (:data:`introspect.tasks.TASKS`): ``audit_kind`` names its
    audit (None: ``skip_reason("audit")`` says why it has none: video, optical flow), and ``cam_methods`` which
    CAM methods its models can run (int8 quantized classifiers: the activation-only ones).

    Raises:
        UsageError: the model's task has no audit (``parameter="model"``).
        UnknownMethodError: a method its task cannot run (``parameter="methods"``).
    """
    task = TASKS[loaded.task]
    refusal = task.skip_reason("audit") or (None if task.audit_kind in AUDIT_KINDS else
                                            f"its task names no audit (audit_kind={task.audit_kind!r})")
    if refusal:
        raise UsageError(f"model={loaded.name!r} cannot be audited ({task.name} model): {refusal}",
                         parameter="model")
    refused = [m for m in options.methods if task.cam_methods is not None and m not in task.cam_methods]
    if refused:
        raise UnknownMethodError(f"methods={','.join(options.methods)}: {refused[0]} cannot run on {loaded.name} "
                                 f"({task.name} model): use {' or '.join(sorted(task.cam_methods))}",
                                 parameter="methods")
    AUDIT_KINDS[task.audit_kind].check_options(loaded, options)


def _audit(prepared: PreparedAudit, out_dir: str | Path | None, resume: bool, world: World,
           on_batch: Callable[[int, int], None] | None) -> Any:
    started = time.perf_counter()
    module, loaded, options, kind = prepared.module, prepared.loaded, prepared.options, prepared.kind
    index = kind.index
    if resume and out_dir is None:
        raise UsageError("resume=True needs out_dir=, the run folder to continue")

    mine = shard(len(index), world)
    bs = options.batch_size
    batches = [list(mine[i:i + bs]) for i in range(0, len(mine), bs)]
    aggregates = kind.aggregates
    fingerprint = _fingerprint(kind, options, world)
    finished: set[int] = set()
    store = None
    if out_dir is not None:
        store = _Store(Path(out_dir) / "audit", world.rank)
        if resume:
            finished = _load_state(store, aggregates, fingerprint)
        elif store.state.exists():
            raise UsageError(f"{store.folder} already holds an audit: pass resume=True to continue it, or "
                             "another out_dir")
        try:
            store.tables.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _oserror(store.tables, error, "nothing was written") from None
    schema = kind.schema() if store is not None else None
    todo = [b for b in range(len(batches)) if b not in finished]
    pending: dict[str, list] = {}
    done_images = sum(len(batches[b]) for b in finished)

    def checkpoint() -> None:
        if store is None:
            return
        kept = f"{sum(len(batches[b]) for b in finished)} finished images are kept in {store.folder}: " \
            "free space and resume"
        if pending and next(iter(pending.values())):
            part = store.next_part()
            try:
                write_part(part, pending, schema)
            except OSError as error:
                raise _oserror(part, error, kept) from None
            store.parts.append(part.name)
        state = {"fingerprint": fingerprint, "finished": sorted(finished), "parts": list(store.parts),
                 "aggregates": aggregates.state_dict()}
        partial = store.state.with_name(store.state.name + ".partial")
        try:
            torch.save(state, partial)
            os.replace(partial, store.state)
        except OSError as error:
            raise _oserror(store.state, error, kept) from None
        pending.clear()

    bar = None
    if options.progress and world.is_main and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), initial=done_images, unit="image", file=sys.stderr, dynamic_ncols=True,
                   desc="audit" if not world.distributed else f"audit (rank 0 of {world.size})", smoothing=0.1)
    loader = kind.loader([batches[b] for b in todo], options.num_workers, loaded.device.type == "cuda")
    since = 0
    try:
        with inspecting(module) as scope:
            kind.hook(module, scope)
            for b, batch in zip(todo, loader):
                files = [index.files[i] for i in batch.indices]
                if batch.failed:
                    bad = [index.files[i] for i, _ in batch.failed]
                    for (i, reason) in batch.failed:
                        warnings.warn(f"skipped {index.root / index.files[i]}: {reason}", IntrospectWarning,
                                      stacklevel=2)
                    aggregates.skip(bad)
                if batch.indices:
                    rows = kind.run_batch(module, batch, files)
                    for key, values in rows.items():
                        pending.setdefault(key, []).extend(values)
                finished.add(b)
                done_images += len(batches[b])
                since += 1
                if since >= options.checkpoint_every:
                    checkpoint()
                    since = 0
                if bar is not None:
                    bar.update(len(batches[b]))
                if on_batch is not None:
                    on_batch(len(finished), done_images)
            checkpoint()
    except BaseException as exc:
        if interrupted_by_user(exc):
            checkpoint()  # everything finished so far stays readable and resumable
        raise
    finally:
        if bar is not None:
            bar.close()

    # -- every rank: sum the dense aggregates, gather the bounded lists and the table parts to rank 0
    all_reduce_sum(aggregates.dense, world)
    lists = gather_to_zero((aggregates.lists(), store.parts if store else []), world)
    table_path = None
    if world.is_main:
        aggregates.merge_lists([lst for lst, _ in lists[1:]])
        if store is not None:
            parts = [store.tables / name for _, names_ in lists for name in names_]
            target = Path(out_dir) / "audit.parquet"
            try:
                merge_parts(parts, target)
            except OSError as error:
                raise _oserror(target, error, f"the parts in {store.tables} are complete: read them, or free "
                                              "space and resume") from None
            table_path = str(target)
    sanity = None
    if options.sanity and world.is_main:
        sanity = kind.sanity(module)
    barrier(world)
    if not world.is_main:
        return None
    settings = {"model": loaded.name, "weights": loaded.weights, "dataset": str(prepared.dataset), **kind.settings(),
                "methods": ",".join(options.methods), "layer": kind.layer, "batch_size": bs,
                "workers": options.num_workers, "processes": world.size, "input_size": loaded.input_size}
    return kind.result(settings, table_path, time.perf_counter() - started, sanity)


class ClassifierAudit(AuditKind):
    """The classifier audit (``audit_kind="classes"``): accuracy, pointing game, per-class figures, galleries,
    the projector sample; a table row per image."""

    def __init__(self, module: nn.Module, loaded: LoadedModel, dataset: Path, options: AuditOptions) -> None:
        self.module, self.loaded, self.options, self.dataset = module, loaded, options, dataset
        self.index = scan_dataset(dataset, tuple(loaded.categories))
        # a model with numbered classes takes its class folders' names
        self.names = self.index.class_names or tuple(loaded.categories)
        self.table: BoxTable | None = read_boxes(options.boxes) if options.boxes is not None else None
        self.geometry = input_geometry(loaded.transform) if self.table is not None else None
        self.choice = pick_cam_layer(module, options.layer)
        self.layer = self.choice.name
        self.needs_grad = needs_layer_gradient(options.methods)
        self.sample = sample_indices(len(self.index), options.projector_size)
        self.aggregates = Aggregates(len(self.names), options.methods, map_size=options.map_size,
                                     gallery_size=options.gallery_size, sample=self.sample)
        self.mean, self.std = _un_normalise(loaded.transform)
        self.penultimate: dict[str, torch.Tensor] = {}
        self.images = AuditImages(self.index, loaded.transform)

    @staticmethod
    def check_options(loaded: LoadedModel, options: AuditOptions) -> None:
        """Refuse options of other audits (masks)."""
        if options.masks is not None:
            raise UsageError(f"masks={options.masks} belongs to a segmentation audit; {loaded.name} is a classifier: "
                             "drop it "
                             "(boxes= gives a classifier audit its pointing game)", parameter="masks")

    def fingerprint(self) -> dict:
        options = self.options
        return {"boxes": self.table is not None, "map_size": options.map_size,
                "projector_size": options.projector_size, "gallery_size": options.gallery_size,
                "tolerance": float(options.tolerance)}

    def loader(self, batches, num_workers, pin_memory):
        return make_loader(self.images, batches, num_workers, pin_memory=pin_memory)

    def schema(self):
        return table_schema(self.options.methods, self.table is not None)

    def hook(self, module, scope) -> None:
        if self.sample:
            _hook_penultimate(module, scope, self.penultimate)

    def run_batch(self, module, batch, files) -> dict[str, list]:
        pending: dict[str, list] = {}
        _one_batch(module, batch, files, self.index, self.names, self.choice, self.options.methods, self.needs_grad,
                   self.table, self.geometry, self.options, self.aggregates, pending, self.mean, self.std,
                   self.penultimate, self.sample)
        return pending

    def sanity(self, module):
        return _sanity(module, self.images, self.index, self.choice, self.options.methods, self.options)

    def settings(self) -> dict:
        table = self.table
        return {"labels": self.index.how,
                "boxes": f"{self.options.boxes} ({table.source})" if table is not None else "none",
                "tolerance_px": float(self.options.tolerance)}

    def result(self, settings, table, seconds, sanity) -> AuditResult:
        ordered = {key: settings[key] for key in ("model", "weights", "dataset", "labels", "boxes", "methods",
                                                  "layer", "tolerance_px", "batch_size", "workers", "processes",
                                                  "input_size")}
        return _result(self.aggregates, self.names, ordered, self.options, table, seconds, sanity)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float tensor (an int8 quantized model's activations dequantized)."""
    tensor = tensor.detach()
    return tensor.dequantize() if tensor.is_quantized else tensor


def _hook_penultimate(module: nn.Module, scope, store: dict[str, torch.Tensor]) -> None:
    from ..analyzers.embeddings import penultimate_source

    for name, layer, where in penultimate_source(module):
        if where == "input":
            scope.forward_pre_hook(layer, lambda m, args, name=name: store.update(
                features=_plain(args[0]) if args and isinstance(args[0], torch.Tensor) else None, layer=name))
        else:
            scope.forward_hook(layer, lambda m, args, out, name=name: store.update(
                features=_plain(first_tensor(out)), layer=name))


def _one_batch(module, batch, files, index, names, choice, methods, needs_grad, table, geometry, options,
               aggregates, pending, mean, std, penultimate, sample) -> None:
    x = batch.tensor
    penultimate.clear()
    forward = run_forward(module, x, capture=[choice.name], grad_layer=choice.name if needs_grad else None)
    try:
        probs = forward.probabilities
        labels = torch.tensor([index.labels[i] for i in batch.indices], dtype=torch.int64)
        targets = TrueLabel.per_image(labels, forward.logits)  # the labelled class, else the top-1
        cam_class = torch.tensor([row[0].index for row in targets], dtype=torch.int64)
        maps = cam_maps(forward, choice, methods, targets, tuple(x.shape[-2:]), model=module,
                        inputs=x.to(forward.logits.device))
        maps = {m: v[0] for m, v in maps.items()}
    finally:
        forward.release()
    boxes = None
    if table is not None:
        boxes = []
        for i, (width, height) in zip(batch.indices, batch.sizes):
            found = table.lookup(index.files[i])
            label = index.labels[i]
            own = [bx for bx in found if label >= 0 and bx.label is not None and label < len(names)
                   and bx.label.lower() == names[label].lower()]
            boxes.append(map_boxes(own or found, geometry, width, height))
    stats = batch_stats(batch.indices, labels, probs, cam_class, maps, boxes, options.tolerance)
    device = next(iter(maps.values())).device
    images01 = (x.to(device).float() * std.to(device) + mean.to(device)).clamp(0, 1)
    features = penultimate.get("features")
    if features is not None:
        features = features.reshape(features.shape[0], -1)
    aggregates.update(stats, probs, maps, images01, files,
                      features if any(i in sample for i in batch.indices) else None)
    rows = table_rows(stats, files, names, methods, table is not None)
    for key, values in rows.items():
        pending.setdefault(key, []).extend(values)


def _load_state(store: _Store, aggregates: Aggregates, fingerprint: dict) -> set[int]:
    if not store.state.is_file():
        raise UsageError(f"nothing to resume in {store.folder}: no {store.state.name} (was the run started with "
                         "the same number of processes?)")
    try:
        state = torch.load(store.state, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UsageError(f"{store.state} cannot be read ({type(error).__name__}): start a new run") from None
    saved = state["fingerprint"]
    differ = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {fingerprint[k]!r}" for k in differ)
        raise UsageError(f"cannot resume {store.folder} with other settings ({shown}): use the same settings "
                         "and number of processes, or start a new run")
    aggregates.load_state_dict(state["aggregates"])
    store.parts = list(state["parts"])
    known = set(store.parts)
    if store.tables.is_dir():  # parts written after the last state: their batches are redone
        for part in store.tables.glob(f"rank{store.rank}-part*.parquet*"):
            if part.name not in known:
                part.unlink()
    return set(int(b) for b in state["finished"])


def _sanity(module, images: AuditImages, index: DatasetIndex, choice, methods, options):
    from .sanity import sanity_check

    tensors, classes = [], []
    for i in range(len(index)):
        if len(tensors) >= options.sanity_samples:
            break
        tensor, _, _ = images[i]
        if tensor is None:
            continue
        tensors.append(tensor)
        classes.append(index.labels[i])
    if not tensors:
        return None
    inputs = torch.stack(tensors)
    first = next(module.parameters(), None)
    if first is not None:
        inputs = inputs.to(first.device)
    logits = run_forward(module, inputs).logits if any(c < 0 for c in classes) else None
    labels = torch.tensor([row[0].index for row in TrueLabel.per_image(classes, logits)])  # unlabelled: top-1
    return sanity_check(module, inputs, labels, choice, methods, steps=options.sanity_steps)


def _name(names: Sequence[str], i: int) -> str:
    return "-" if i < 0 else (names[i] if i < len(names) else f"class {i}")


def _result(aggregates: Aggregates, names, settings, options: AuditOptions, table_path, seconds,
            sanity) -> AuditResult:
    d = aggregates.dense
    count = aggregates.count
    labelled = count("labelled")
    pointing, centre, energy = aggregates.pointing()
    present = aggregates.present_classes()
    sel = torch.tensor(present, dtype=torch.long)
    confusion = d["confusion"][sel][:, sel].numpy() if present else np.zeros((0, 0), dtype=np.int64)
    by_images = sorted(torch.nonzero(d["class_images"]).flatten().tolist(),
                       key=lambda c: (-int(d["class_images"][c]), c))[: options.max_classes]
    pr_classes = sorted(by_images)
    pr_sel = torch.tensor(pr_classes, dtype=torch.long)
    pr_positive = d["pr_positive"][pr_sel].numpy() if pr_classes else np.zeros((0, 0), dtype=np.int64)
    pr_negative = (d["pr_all"][pr_sel] - d["pr_positive"][pr_sel]).numpy() if pr_classes else pr_positive
    pr_curves = tuple(pr_curve(c, _name(names, c), pr_positive[row], pr_negative[row])
                      for row, c in enumerate(pr_classes))
    top1 = count("top1") / labelled if labelled else math.nan
    confusion_image = confusion_figure(confusion, [_name(names, c) for c in present], top1) \
        if present and labelled else None
    mean_cams = []
    cam_classes = sorted(torch.nonzero(d["cam_count"]).flatten().tolist(),
                         key=lambda c: (-int(d["cam_count"][c]), c))[: options.max_classes]
    for c in sorted(cam_classes):
        n = int(d["cam_count"][c])
        photo = (d["image_sum"][c] / n).clamp(0, 1).numpy()
        photo = np.repeat(np.repeat((photo * 255).round().astype(np.uint8), 2, axis=0), 2, axis=1)
        maps = (d["cam_sum"][:, c] / n).numpy()
        lo = maps.min(axis=(1, 2), keepdims=True)
        hi = maps.max(axis=(1, 2), keepdims=True)
        maps = ((maps - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)
        image = mean_cam_panel(photo, maps, f"{_name(names, c)} ({n})", aggregates.methods)
        mean_cams.append(MeanCam(class_index=c, class_name=_name(names, c), count=n, methods=aggregates.methods,
                                 maps=maps, image=image))
    galleries = []
    first = aggregates.methods[0] if aggregates.methods else "cam"
    for key, title, entries in (
            ("worst_confident_wrong", f"most confidently wrong: the photo (label), and {first}'s map of the label "
                                      "(model: its top class and probability)", aggregates.wrong),
            ("lowest_energy_in_box", f"lowest energy in box: the least of {first}'s map of the label inside the "
                                     "object's boxes (drawn in white) first", aggregates.lowest)):
        if not entries:
            continue
        items = tuple(GalleryItem(index=e["index"], file=e["file"], label=e["label"],
                                  label_name=_name(names, e["label"]), predicted=e["predicted"],
                                  predicted_name=_name(names, e["predicted"]), probability=e["probability"],
                                  energy=e["energy"], hit=e["hit"], image=draw_entry(e, names, first))
                      for e in entries)
        galleries.append(Gallery(name=key, title=title, items=items,
                                 image=gallery_image([entry_pair(e) for e in entries],
                                                     [entry_caption(e, names, first) for e in entries])))
    sample = None
    if aggregates.samples:
        s = aggregates.samples
        sample = AuditSample(layer="penultimate", features=torch.stack([e["features"] for e in s]).numpy(),
                             files=tuple(e["file"] for e in s), labels=tuple(_name(names, e["label"]) for e in s),
                             predicted=tuple(_name(names, e["predicted"]) for e in s),
                             probabilities=tuple(e["probability"] for e in s),
                             correct=tuple(e["correct"] for e in s),
                             thumbnails=torch.stack([e["thumbnail"] for e in s]).numpy())
    return AuditResult(
        settings=settings, methods=aggregates.methods, images=count("images"), skipped=count("skipped"),
        skipped_files=tuple(aggregates.skipped_files), labelled=labelled, top1=top1,
        top5=count("top5") / labelled if labelled else math.nan,
        boxed=int(d["class_boxed"].sum()), tolerance=float(options.tolerance), pointing=pointing,
        centre_baseline=centre, energy=energy, classes=aggregates.class_rows(names),
        confusion_classes=tuple(present), confusion=confusion, pr_classes=tuple(pr_classes),
        pr_positive=pr_positive, pr_negative=pr_negative, pr_curves=pr_curves, confusion_image=confusion_image,
        mean_cams=tuple(mean_cams), galleries=tuple(galleries),
        sample=sample, sanity=sanity, table=table_path,
        protocol=PROTOCOL.format(tolerance=options.tolerance) if int(d["class_boxed"].sum()) else ACCURACY_PROTOCOL,
        seconds=seconds, category_names=tuple(names))


def options_from(**kwargs) -> AuditOptions:
    """AuditOptions from keyword arguments, ignoring None values (the CLI's unset flags keep the defaults)."""
    known = {f.name for f in fields(AuditOptions)}
    return AuditOptions(**{k: v for k, v in kwargs.items() if k in known and v is not None})


#: The dataset audits by ``Task.audit_kind``.
AUDIT_KINDS: dict[str, type[AuditKind]] = {"classes": ClassifierAudit, "boxes": DetectionAudit,
                                             "masks": SegmentationAudit}
