"""The detection audit (``audit_kind="boxes"``): mAP over images and their object boxes, and where the detector
looked for each detection.

Each batch is one forward pass of the detector over the images at their own size (it resizes them itself)
and one backward for the box-score targets of every explained detection
(:func:`introspect.tasks.detection.detection_pass`, :func:`~introspect.tasks.detection.box_cam_maps`). Each
image's detections are matched to its ground truth as COCO does (best score first, each to the unmatched
box of its class with the largest IoU at least ``iou_threshold``); a matched detection's CAM is scored
against its object's box (energy in box, pointing hit). mAP, AP50, AP75, AP per size and per class are
pycocotools' own ``COCOeval`` over every detection (the reference implementation, so the figures are the
ones COCO publishes). The detections (seven numbers each) are kept in a list that rank 0 gathers at the
end: an audit of N images holds at most 100 N of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..records import ClassDetectionAudit, DetectionAuditResult, Gallery, PointingGame, PrCurve
from .boxes import read_boxes
from .kinds import AuditKind, KeyedAggregates, grid, item_loader

__all__ = ["DetectionIndex", "DetectionAudit", "scan_detection_dataset", "coco_evaluation", "PROTOCOL"]

PR_BINS = 100

PROTOCOL = """**Detection audit.** Each image goes to the detector at its own size (the detector resizes it as it was
trained to); detections scoring {min_score:g} or more (at most the detector's own limit per image) are kept.
**mAP** is pycocotools' COCOeval (bbox) over every kept detection: AP over IoU 0.50:0.95, AP50, AP75, AP of small /
medium / large objects, and per class the AP of its own precision array. **Matching** (table, CAM figures,
galleries): per image and class, best score first, a detection takes the unmatched ground-truth box of largest
IoU, if that IoU is {iou:g} or more. **Where it looked**: the {explained} best detections per image scoring
{threshold:g} or more get a CAM each, the target being the detection's box score (pytorch-grad-cam's
FasterRCNNBoxScoreTarget), all of an image's from one forward and one backward. For a matched detection the
*energy in box* is the share of its normalised map inside its object's box, and it is a *hit* when the map's
maximum lies within {tolerance:g} px of that box (TorchRay's pointing rule). **Missed objects**: ground-truth
boxes no detection scoring {threshold:g} or more matched, largest first; **confident false positives**: detections
scoring {threshold:g} or more that matched nothing, best score first."""


@dataclass(frozen=True)
class DetectionIndex:
    """The images the annotations name, in a fixed order, with their objects (original pixels, labels)."""

    root: Path
    files: tuple[str, ...]  # paths relative to root
    boxes: tuple[np.ndarray, ...]  # float64 (n, 4): x0, y0, x1, y1
    labels: tuple[np.ndarray, ...]  # int64 (n,): the model's labels
    source: str

    def __len__(self) -> int:
        return len(self.files)


def scan_detection_dataset(root: Path, boxes: str | Path | None, categories: Sequence[str]) -> DetectionIndex:
    """The images ``boxes`` (COCO JSON, a folder of VOC XML or a CSV) names under ``root``, with their objects as
    the model's labels (matched to its categories by name). Every bad input is a one-line UsageError."""
    from ..images import IMAGE_SUFFIXES

    if not Path(root).is_dir():
        raise UsageError(f"dataset folder {root} does not exist or is not a folder: check dataset=",
                         parameter="dataset")
    if boxes is None:
        classes = sorted({p.parent.name for p in Path(root).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES})
        hint = f" ({root} holds class folders, which a classifier audit reads)" if classes else ""
        raise UsageError(f"a detector's audit needs the objects' boxes{hint}: give boxes=FILE, a COCO JSON (or a "
                         f"folder of Pascal VOC XML files) naming the images under {root}", parameter="boxes")
    table = read_boxes(boxes)
    on_disk = {p.relative_to(root).as_posix(): p for p in Path(root).rglob("*")
               if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    by_name: dict[str, list[str]] = {}
    for relative in on_disk:
        by_name.setdefault(relative.rsplit("/", 1)[-1], []).append(relative)
    lowered = {name.lower(): i for i, name in enumerate(categories)}
    files, all_boxes, all_labels, missing, unknown = [], [], [], [], set()
    for name in sorted(table.boxes):
        found = name if name in on_disk else (by_name.get(name.rsplit("/", 1)[-1]) or [None])[0]
        if found is None:
            missing.append(name)
            continue
        objects = table.boxes[name]
        labels = []
        for box in objects:
            label = lowered.get((box.label or "").lower())
            if label is None:
                unknown.add(box.label)
            labels.append(-1 if label is None else label)
        files.append(found)
        all_boxes.append(np.array([[b.x0, b.y0, b.x1, b.y1] for b in objects], dtype=np.float64).reshape(-1, 4))
        all_labels.append(np.array(labels, dtype=np.int64))
    if missing:
        raise UsageError(f"boxes={boxes} names {len(missing)} image(s) that are not under {root} (first: "
                         f"{missing[0]!r}): put them there, or give the annotation file of this folder",
                         parameter="boxes")
    if unknown:
        shown = ", ".join(repr(u) for u in sorted(unknown, key=str)[:4])
        raise UsageError(f"boxes={boxes} has classes {shown} that are not the model's categories (e.g. "
                         f"{', '.join(c for c in categories[:4])}): name the categories as the model does",
                         parameter="boxes")
    if not files:
        raise UsageError(f"boxes={boxes} names no image: give the annotations of the images under {root}",
                         parameter="boxes")
    order = sorted(range(len(files)), key=lambda i: files[i])
    return DetectionIndex(Path(root), tuple(files[i] for i in order), tuple(all_boxes[i] for i in order),
                          tuple(all_labels[i] for i in order), table.source)


class _Photos(torch.utils.data.Dataset):
    """Item ``i``: ((3, H, W) float tensor in [0, 1] at the image's own size, i, (width, height)) or
    (None, i, reason)."""

    def __init__(self, index: DetectionIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        from ..errors import ImageError
        from .dataset import read_photo

        try:
            image = read_photo(self.index.root / self.index.files[i])
            array = np.asarray(image, dtype=np.uint8)
            return torch.from_numpy(array.copy()).permute(2, 0, 1), i, image.size
        except (ImageError, OSError, ValueError) as error:
            return None, i, " ".join(str(error).split())


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of (x0, y0, x1, y1) boxes (as COCO: areas without a +1)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match(boxes: np.ndarray, labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
          threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image's detections (best score first) to its objects: (matched object per
    detection, -1 for none; its IoU with the best object of its class, 0 without one)."""
    matched = np.full(len(boxes), -1, dtype=np.int64)
    best = np.zeros(len(boxes))
    ious = _iou(boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in range(len(boxes)):
        same = gt_labels == labels[d]
        if not same.any():
            continue
        row = np.where(same, ious[d], -1.0)
        best[d] = row.max()
        free = np.where(taken, -1.0, row)
        g = int(free.argmax())
        if free[g] >= threshold:
            matched[d], taken[g] = g, True
    return matched, best


def _pixel_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """A box in whole pixels, rounded outwards and clipped (x1, y1 exclusive)."""
    x0, y0 = max(0, math.floor(box[0] + 1e-6)), max(0, math.floor(box[1] + 1e-6))
    x1, y1 = min(width, math.ceil(box[2] - 1e-6)), min(height, math.ceil(box[3] - 1e-6))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _dense(c: int, m: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {
        "counts": ((5,), torch.int64),  # images, objects, detections, explained, explained and matched
        "class_objects": ((c,), torch.int64),
        "class_found": ((c,), torch.int64),  # objects matched by a detection scoring >= the threshold
        "class_confident": ((c,), torch.int64),  # detections scoring >= the threshold
        "class_explained": ((c,), torch.int64),  # explained matched detections
        "class_hits": ((m, c), torch.int64),
        "class_energy": ((m, c), torch.float64),
    }


_COUNTS = ("images", "objects", "detections", "explained", "explained_matched")


class DetectionAudit(AuditKind):
    """The detection audit (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, loaded: Any, dataset: Path, options: Any) -> None:
        from ..engine.cam import single_pass_methods
        from ..tasks.detection import coco_categories

        self.module, self.loaded, self.options = module, loaded, options
        self.methods = tuple(single_pass_methods(options.methods, "detection"))
        self.names = tuple(loaded.categories) or coco_categories()
        self.index = scan_detection_dataset(dataset, options.boxes, self.names)
        if options.layer:
            from ..layers import resolve_layer

            resolve_layer(module, options.layer)
        from ..tasks import TASKS

        self.explained = TASKS[loaded.task].explained_layer(loaded, options.layer)  # None: the maps the heads read
        self.layer = self.explained or "backbone (the maps the heads read)"
        self.aggregates = KeyedAggregates(_dense(len(self.names), len(self.methods)),
                                          ("missed", "false_positives"), ("detections", "audited"),
                                          limit=options.gallery_size)

    @staticmethod
    def check_options(loaded: Any, options: Any) -> None:
        """Refuse options of other audits (masks, the sanity check)."""
        if options.masks is not None:
            raise UsageError(f"masks={options.masks} belongs to a segmentation audit; {loaded.name} is a detector: "
                             "give it boxes=FILE",
                             parameter="masks")
        if options.sanity:
            raise UsageError(f"sanity=True (the randomisation check) is written for classifier audits, not for "
                             f"{loaded.name}: drop it", parameter="sanity")

    def fingerprint(self) -> dict:
        o = self.options
        return {"kind": "boxes", "files": len(self.index), "score_threshold": o.score_threshold,
                "min_score": o.min_score, "max_explained": o.max_explained, "iou_threshold": o.iou_threshold,
                "gallery_size": o.gallery_size, "tolerance": float(o.tolerance)}

    def loader(self, batches, num_workers, pin_memory):
        return item_loader(_Photos(self.index), batches, num_workers)

    def schema(self):
        from .table import arrow

        pa = arrow()
        fields = [("index", pa.int64()), ("file", pa.string()), ("detection", pa.int32()), ("label", pa.int64()),
                  ("label_name", pa.string()), ("score", pa.float32()), ("x0", pa.float32()), ("y0", pa.float32()),
                  ("x1", pa.float32()), ("y1", pa.float32()), ("matched", pa.int32()), ("iou", pa.float64()),
                  ("explained", pa.bool_())]
        for method in self.methods:
            fields += [(f"{method}_energy", pa.float64()), (f"{method}_hit", pa.bool_()),
                       (f"{method}_peak_y", pa.int32()), (f"{method}_peak_x", pa.int32())]
        return pa.schema(fields)

    def settings(self) -> dict:
        o = self.options
        return {"boxes": f"{o.boxes} ({self.index.source})", "score_threshold": o.score_threshold,
                "min_score": o.min_score, "iou_threshold": o.iou_threshold, "explained_per_image": o.max_explained,
                "tolerance_px": float(o.tolerance)}

    # -- one batch ---------------------------------------------------------------------------------
    def run_batch(self, module, batch, files) -> dict[str, list]:
        from ..tasks.common import TaskImages
        from ..tasks.detection import box_cam_maps, detection_pass

        o = self.options
        uint8 = [value for value, _ in batch.items]
        photos = tuple(t.permute(1, 2, 0).numpy() for t in uint8)
        tensors = tuple(t.float() / 255.0 for t in uint8)
        found = detection_pass(module, TaskImages(tensors, photos, tuple(files)), methods=self.methods,
                               layer=self.explained, score_threshold=o.min_score, categories=self.names)
        try:
            detections = found.detections  # best score first
            chosen = [[i for i in range(len(d)) if d.scores[i] >= o.score_threshold][:o.max_explained]
                      for d in detections]
            maps = box_cam_maps(module, found, self.methods, chosen) if self.methods else {}
        finally:
            found.release()
        rows: dict[str, list] = {}
        d = self.aggregates.dense
        counts = d["counts"]
        for n, (i, det) in enumerate(zip(batch.indices, detections)):
            gt_boxes, gt_labels = self.index.boxes[i], self.index.labels[i]
            height, width = photos[n].shape[:2]
            boxes = det.boxes.astype(np.float64)
            labels = det.labels.astype(np.int64)
            scores = det.scores.astype(np.float64)
            matched, best = match(boxes, labels, gt_boxes, gt_labels, o.iou_threshold)
            confident = scores >= o.score_threshold
            counts[0] += 1
            counts[1] += len(gt_labels)
            counts[2] += len(labels)
            np.add.at(d["class_objects"].numpy(), gt_labels, 1)
            np.add.at(d["class_confident"].numpy(), labels[confident], 1)
            found_objects = matched[confident & (matched >= 0)]
            np.add.at(d["class_found"].numpy(), gt_labels[found_objects], 1)
            self.aggregates.plain["audited"].append(int(i))
            self.aggregates.plain["detections"].append(torch.from_numpy(np.concatenate(
                [np.full((len(labels), 1), float(i)), labels[:, None].astype(np.float64), scores[:, None], boxes],
                axis=1)))
            picks = chosen[n]
            k = len(picks)
            energy = np.full((len(self.methods), len(labels)), np.nan)
            hits = np.zeros((len(self.methods), len(labels)), dtype=bool)
            peaks = np.full((len(self.methods), len(labels), 2), -1, dtype=np.int64)
            counts[3] += k
            if k:
                stack = {m: maps[m][n][:k] for m in self.methods}
                for mi, m in enumerate(self.methods):
                    flat = stack[m].reshape(k, -1).argmax(dim=1)
                    peaks[mi, picks, 0] = (flat // width).numpy()
                    peaks[mi, picks, 1] = (flat % width).numpy()
                own = [(j, p) for j, p in enumerate(picks) if matched[p] >= 0]
                counts[4] += len(own)
                if own:
                    object_boxes = np.array([_pixel_box(gt_boxes[matched[p]], height, width) for _, p in own],
                                            dtype=np.int64)
                    game = PointingGame(methods=self.methods, peaks=peaks[:, [p for _, p in own]], boxes=object_boxes)
                    own_labels = torch.from_numpy(labels[[p for _, p in own]])
                    d["class_explained"].index_add_(0, own_labels, torch.ones(len(own), dtype=torch.int64))
                    for mi, m in enumerate(self.methods):
                        game_hits = game.hits(m, tolerance=o.tolerance)
                        for (j, p), (x0, y0, x1, y1), hit in zip(own, object_boxes, game_hits):
                            heat = stack[m][j].double()
                            total = float(heat.sum())
                            energy[mi, p] = float(heat[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0
                            hits[mi, p] = bool(hit)
                        d["class_hits"][mi].index_add_(0, own_labels, torch.from_numpy(game_hits.astype(np.int64)))
                        d["class_energy"][mi].index_add_(0, own_labels,
                                                         torch.from_numpy(energy[mi, [p for _, p in own]]))
            self._galleries(n, i, files[n], photos[n], det, matched, confident, picks,
                            {m: maps[m][n] for m in self.methods} if k else {}, gt_boxes, gt_labels)
            explained = np.zeros(len(labels), dtype=bool)
            explained[picks] = True
            column = {"index": [int(i)] * len(labels), "file": [files[n]] * len(labels),
                      "detection": list(range(len(labels))), "label": labels.tolist(),
                      "label_name": [self._name(c) for c in labels], "score": det.scores.tolist(),
                      "x0": det.boxes[:, 0].tolist(), "y0": det.boxes[:, 1].tolist(),
                      "x1": det.boxes[:, 2].tolist(), "y1": det.boxes[:, 3].tolist(),
                      "matched": [int(g) if g >= 0 else None for g in matched],
                      "iou": [float(b) if (gt_labels == c).any() else None for b, c in zip(best, labels)],
                      "explained": explained.tolist()}
            for mi, m in enumerate(self.methods):
                column[f"{m}_energy"] = [None if math.isnan(e) else float(e) for e in energy[mi]]
                column[f"{m}_hit"] = [bool(h) if not math.isnan(e) else None for h, e in zip(hits[mi], energy[mi])]
                column[f"{m}_peak_y"] = [int(v) if v >= 0 else None for v in peaks[mi, :, 0]]
                column[f"{m}_peak_x"] = [int(v) if v >= 0 else None for v in peaks[mi, :, 1]]
            for key, values in column.items():
                rows.setdefault(key, []).extend(values)
        return rows

    def _name(self, label: int) -> str:
        return self.names[label] if 0 <= label < len(self.names) else f"class {label}"

    def _galleries(self, n, i, file, photo, det, matched, confident, picks, maps, gt_boxes, gt_labels) -> None:
        aggregates = self.aggregates
        hit_objects = set(matched[confident & (matched >= 0)].tolist())
        for g in range(len(gt_labels)):
            if g in hit_objects:
                continue
            x0, y0, x1, y1 = gt_boxes[g]
            key = (-float((x1 - x0) * (y1 - y0)), int(i), g)
            if aggregates.worth("missed", key):
                heat = maps[self.methods[0]][0] if maps and picks else None
                caption = f"found: {det.names[picks[0]]} {det.scores[picks[0]]:.2f}" if picks else "nothing found"
                aggregates.offer("missed", {"key": list(key), "file": file, "what": self._name(int(gt_labels[g])),
                                            **_pieces(photo, gt_boxes[g:g + 1], det.boxes[np.nonzero(confident)[0]],
                                                      heat, f"missed: {self._name(int(gt_labels[g]))}", caption)})
        for j, p in enumerate(picks):
            if matched[p] >= 0:
                continue
            key = (-float(det.scores[p]), int(i), int(p))
            if aggregates.worth("false_positives", key):
                heat = maps[self.methods[0]][j] if maps else None
                aggregates.offer("false_positives", {
                    "key": list(key), "file": file, "what": f"{det.names[p]} {det.scores[p]:.2f}",
                    **_pieces(photo, gt_boxes, det.boxes[p:p + 1], heat, "truth",
                              f"false: {det.names[p]} {det.scores[p]:.2f}")})

    # -- the result ---------------------------------------------------------------------------------
    def result(self, settings, table, seconds, sanity) -> DetectionAuditResult:
        a = self.aggregates
        d = a.dense
        o = self.options
        audited = sorted(set(a.plain["audited"]))
        found = torch.cat(a.plain["detections"]).numpy() if a.plain["detections"] else np.zeros((0, 7))
        evaluation = coco_evaluation(self.index, audited, found) if audited else None
        stats = evaluation["stats"] if evaluation else [math.nan] * 12
        per_class_ap = evaluation["per_class"] if evaluation else {}
        classes = []
        for c in torch.nonzero(d["class_objects"] + d["class_confident"]).flatten().tolist():
            explained = int(d["class_explained"][c])
            classes.append(ClassDetectionAudit(
                index=c, name=self._name(c), objects=int(d["class_objects"][c]),
                ap=per_class_ap.get(c, (math.nan, math.nan))[0], ap50=per_class_ap.get(c, (math.nan, math.nan))[1],
                found=int(d["class_found"][c]), confident=int(d["class_confident"][c]), explained=explained,
                hits=tuple(int(d["class_hits"][m, c]) for m in range(len(self.methods))),
                energy=tuple(float(d["class_energy"][m, c]) / explained if explained else math.nan
                             for m in range(len(self.methods)))))
        explained = int(d["counts"][4])
        pointing = {m: int(d["class_hits"][i].sum()) / explained for i, m in enumerate(self.methods)} if explained \
            else {}
        energy = {m: float(d["class_energy"][i].sum()) / explained for i, m in enumerate(self.methods)} \
            if explained else {}
        by_objects = sorted(torch.nonzero(d["class_objects"]).flatten().tolist(),
                            key=lambda c: (-int(d["class_objects"][c]), c))[: o.max_classes]
        curves = tuple(replace(evaluation["curves"][c], class_name=self._name(c)) for c in sorted(by_objects)
                       if evaluation and c in evaluation["curves"])
        galleries = []
        for name, title in (("missed_objects", "missed objects, largest first (green: the object | red: the "
                                              "detections found, over the best one's CAM)"),
                            ("confident_false_positives", "confident false positives, best score first (green: the "
                                                          "objects | red: the detection, over its CAM)")):
            entries = a.galleries["missed" if name == "missed_objects" else "false_positives"]
            if entries:
                galleries.append(Gallery(name=name, title=title, items=(),
                                         image=grid([_panel(e) for e in entries])))
        listed = {g: [(e["file"], e["what"]) for e in a.galleries[key]]
                  for g, key in (("missed_objects", "missed"), ("confident_false_positives", "false_positives"))}
        return DetectionAuditResult(
            settings=settings, methods=self.methods, images=int(d["counts"][0]), skipped=a.skipped,
            skipped_files=tuple(a.skipped_files), objects=int(d["counts"][1]), detections=int(d["counts"][2]),
            explained=int(d["counts"][3]), explained_matched=explained,
            map=float(stats[0]), ap50=float(stats[1]), ap75=float(stats[2]), ap_small=float(stats[3]),
            ap_medium=float(stats[4]), ap_large=float(stats[5]), ar100=float(stats[8]), classes=tuple(classes),
            pointing=pointing, energy=energy, pr_curves=curves, galleries=tuple(galleries), listed=listed,
            protocol=PROTOCOL.format(min_score=o.min_score, iou=o.iou_threshold, explained=o.max_explained,
                                     threshold=o.score_threshold, tolerance=o.tolerance),
            table=table, seconds=seconds, category_names=self.names)


def _pieces(photo: np.ndarray, truth: np.ndarray, found: np.ndarray, heat: torch.Tensor | None, left: str,
            right: str, side: int = 200) -> dict:
    """What a gallery panel is drawn from, at ``side`` px (the longer side): the photo (uint8), the CAM (half), the
    ground-truth and detected boxes scaled to it, the captions. Drawn only for the entries kept (:func:`_panel`)."""
    import torch.nn.functional as F

    height, width = photo.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.interpolate(torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float(), size=size,
                          mode="area")[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    if heat is not None:
        heat = F.interpolate(heat[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].half()
    return {"photo": small, "heat": heat, "truth": torch.from_numpy(np.asarray(truth, np.float32) * scale),
            "found": torch.from_numpy(np.asarray(found, np.float32) * scale), "captions": [left, right]}


def _panel(entry: dict) -> np.ndarray:
    """A gallery entry drawn: the photo with the ground-truth boxes (green), and beside it the CAM with the
    detections (red)."""
    from ..drawing import labelled_panels, overlay

    photo = entry["photo"].numpy()
    base = overlay(photo, entry["heat"].float().numpy()) if entry["heat"] is not None else photo
    return labelled_panels([_draw_boxes(photo, entry["truth"].numpy(), TRUTH_COLOUR),
                         _draw_boxes(base, entry["found"].numpy(), DETECTION_COLOUR)], entry["captions"], padding=2)


TRUTH_COLOUR = (0, 230, 0)
DETECTION_COLOUR = (255, 40, 40)


def _draw_boxes(photo: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Boxes drawn 2 px wide in one colour (green: ground truth, red: detections; the captions name them)."""
    from torchvision.utils import draw_bounding_boxes

    if not len(boxes):
        return photo
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).contiguous()
    drawn = draw_bounding_boxes(image, torch.from_numpy(np.asarray(boxes, dtype=np.float32)), colors=colour, width=2)
    return drawn.permute(1, 2, 0).contiguous().numpy()


def coco_ground_truth(index: DetectionIndex, images: Sequence[int]) -> dict:
    """The objects of ``images`` (dataset indices, also the image ids) as a COCO dataset dict; category ids are
    the model's labels."""
    annotations = []
    for i in images:
        for (x0, y0, x1, y1), label in zip(index.boxes[i], index.labels[i]):
            annotations.append({"id": len(annotations) + 1, "image_id": int(i), "category_id": int(label),
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
    labels = sorted({int(c) for i in images for c in index.labels[i]})
    return {"images": [{"id": int(i), "file_name": index.files[i]} for i in images], "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in labels]}


def coco_evaluation(index: DetectionIndex, images: Sequence[int], detections: np.ndarray) -> dict | None:
    """pycocotools' COCOeval (bbox) of ``detections`` (rows: image index, label, score, x0, y0, x1, y1) on the
    objects of ``images``: its 12 stats, per class (AP, AP50), and per class the PR curve at IoU 0.5."""
    import contextlib
    import io

    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UsageError("the detection audit's mAP needs pycocotools: pip install 'introspect[audit]'") from None
    gt = coco_ground_truth(index, images)
    if not gt["annotations"]:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        results = [{"image_id": int(r[0]), "category_id": int(r[1]), "score": float(r[2]),
                    "bbox": [float(r[3]), float(r[4]), float(r[5] - r[3]), float(r[6] - r[4])]}
                   for r in detections if int(r[1]) in coco.cats]
        dt = coco.loadRes(results) if results else COCO()
        if not results:
            dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(coco, dt, "bbox")
        evaluator.params.imgIds = list(map(int, images))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # (T, R, K, A, M)
    per_class, curves = {}, {}
    for k, c in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        ap = float(p[p > -1].mean()) if (p > -1).any() else math.nan
        p50 = precision[0, :, k, 0, -1]
        ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else math.nan
        per_class[int(c)] = (ap, ap50)
        curves[int(c)] = _pr_curve(evaluator, k, int(c), index)
    return {"stats": [float(v) for v in evaluator.stats], "per_class": per_class, "curves": curves}


def _pr_curve(evaluator, k: int, label: int, index: DetectionIndex) -> PrCurve:
    """Class ``label``'s PR curve at IoU 0.5 (all areas, 100 detections per image) from COCOeval's matches:
    thresholds ``i / 100`` of the score."""
    area = evaluator.params.areaRng[0]
    scores, positive, objects = [], [], 0
    for e in evaluator.evalImgs:
        if e is None or e["category_id"] != label or e["aRng"] != area:
            continue
        keep = ~np.asarray(e["dtIgnore"][0], dtype=bool)[:100] if len(e["dtIds"]) else np.zeros(0, dtype=bool)
        scores += list(np.asarray(e["dtScores"][:100])[keep])
        positive += list((np.asarray(e["dtMatches"][0][:100]) > 0)[keep])
        objects += int((~np.asarray(e["gtIgnore"], dtype=bool)).sum())
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    bins = np.clip((scores * PR_BINS).astype(np.int64), 0, PR_BINS - 1)
    tp_hist = np.bincount(bins[positive], minlength=PR_BINS)
    fp_hist = np.bincount(bins[~positive], minlength=PR_BINS)
    tp = np.cumsum(tp_hist[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(fp_hist[::-1])[::-1].astype(np.float64)
    fn = objects - tp
    name = str(label)
    return PrCurve(class_index=label, class_name=name, tp=tp, fp=fp, tn=np.zeros(PR_BINS), fn=fn,
                   precision=tp / np.maximum(tp + fp, 1), recall=tp / max(objects, 1))
