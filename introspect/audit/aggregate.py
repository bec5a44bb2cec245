"""Per-batch figures and the running aggregates of an audit: fixed-size, mergeable, resumable.

Nothing of a batch is kept once :meth:`Aggregates.update` has run, except what fits a fixed
budget: counts and sums (per class, per method), the C x C confusion counts, per-class score
histograms for the precision-recall curves, per-class mean CAMs at ``map_size`` x ``map_size``,
two bounded galleries and a fixed projector sample. Dense arrays add up across processes; the
bounded lists merge by their keys (which include the image's index, so any split gives the
same result).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StateError
from ..records import ClassAudit, PointingGame

__all__ = ["BatchStats", "batch_stats", "Aggregates", "sample_indices"]

PR_BINS = 100  # thresholds of the precision-recall curves (TensorBoard takes at most 127)


@dataclass
class BatchStats:
    """Per-image figures of one batch (numpy, on the CPU)."""

    indices: np.ndarray  # int64 (n,): dataset index
    labels: np.ndarray  # int64 (n,): -1 = none
    top5: np.ndarray  # int64 (n, k<=5)
    top5_prob: np.ndarray  # float32 (n, k)
    cam_class: np.ndarray  # int64 (n,): the class the first map explains
    peaks: np.ndarray  # int64 (methods, n, 2): (row, column) of each map's maximum
    boxed: np.ndarray  # bool (n,): has a box inside the input
    hits: np.ndarray  # bool (methods, n)
    centre: np.ndarray  # bool (n,)
    energy: np.ndarray  # float64 (methods, n): NaN where not boxed
    boxes: tuple = ()  # per image, its boxes (x0, y0, x1, y1) in input pixels; () without boxes


def batch_stats(indices: Sequence[int], labels: torch.Tensor, probs: torch.Tensor, cam_class: torch.Tensor,
                maps: dict[str, torch.Tensor], boxes: Sequence[Sequence[tuple[int, int, int, int]]] | None,
                tolerance: float) -> BatchStats:
    """Peaks, pointing hits, centre-baseline hits and energy in box of each image's first map.

    Args:
        maps: method -> (n, H, W) normalised maps (any device).
        boxes: per image, its boxes in input pixels (x1, y1 exclusive); None when there are no boxes.
        tolerance: pointing tolerance in input pixels (Euclidean distance to the box).
    """
    methods = tuple(maps)
    n = len(indices)
    k = min(5, probs.shape[-1])
    values, top = probs.topk(k, dim=-1)
    first = next(iter(maps.values()))
    height, width = first.shape[-2:]
    peaks = np.zeros((len(methods), n, 2), dtype=np.int64)
    for m, name in enumerate(methods):
        flat = maps[name].reshape(n, -1).argmax(dim=1).cpu()
        peaks[m, :, 0] = (flat // width).numpy()
        peaks[m, :, 1] = (flat % width).numpy()
    boxed = np.zeros(n, dtype=bool)
    hits = np.zeros((len(methods), n), dtype=bool)
    centre = np.zeros(n, dtype=bool)
    energy = np.full((len(methods), n), np.nan)
    if boxes is not None and n:
        owner = np.array([i for i, bs in enumerate(boxes) for _ in bs], dtype=np.int64)
        flat_boxes = np.array([b for bs in boxes for b in bs], dtype=np.int64).reshape(-1, 4)
        boxed[np.unique(owner)] = True
        if len(owner):
            # TorchRay's rule, one (image, box) pair at a time through PointingGame; an image hits if any box does.
            game = PointingGame(methods=methods, peaks=peaks[:, owner], boxes=flat_boxes)
            centre_game = PointingGame(methods=("centre",), boxes=flat_boxes,
                                       peaks=np.tile([[height // 2, width // 2]], (1, len(owner), 1)))
            for m, name in enumerate(methods):
                np.logical_or.at(hits[m], owner, game.hits(name, tolerance=tolerance))
            np.logical_or.at(centre, owner, centre_game.hits("centre", tolerance=tolerance))
            mask = torch.zeros((n, height, width), dtype=torch.bool)
            for i, (x0, y0, x1, y1) in zip(owner, flat_boxes):
                mask[i, y0:y1, x0:x1] = True
            mask = mask.to(first.device)
            for m, name in enumerate(methods):
                total = maps[name].double().sum(dim=(1, 2))
                inside = (maps[name].double() * mask).sum(dim=(1, 2))
                share = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total)).cpu().numpy()
                energy[m, boxed] = share[boxed]
    return BatchStats(indices=np.asarray(indices, dtype=np.int64), labels=labels.cpu().numpy().astype(np.int64),
                      top5=top.cpu().numpy().astype(np.int64), top5_prob=values.cpu().numpy().astype(np.float32),
                      cam_class=cam_class.cpu().numpy().astype(np.int64), peaks=peaks, boxed=boxed, hits=hits,
                      centre=centre, energy=energy,
                      boxes=tuple(tuple(tuple(int(v) for v in b) for b in bs) for bs in boxes) if boxes is not None
                      else ())


def _priority(index: int, seed: int = 0) -> int:
    """A fixed pseudo-random priority per image (splitmix64 of its index): the projector sample's order."""
    z = (index + 0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def sample_indices(total: int, size: int) -> frozenset[int]:
    """The ``size`` images of ``range(total)`` with the lowest priority: a uniform sample that every process
    and every split of the data agrees on (bottom-k sampling)."""
    if size <= 0:
        return frozenset()
    if size >= total:
        return frozenset(range(total))
    import heapq

    return frozenset(heapq.nsmallest(size, range(total), key=_priority))


# The dense arrays: name -> (shape builder, dtype). All add up across processes.
def _dense_shapes(c: int, m: int, s: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {
        "counts": ((6,), torch.int64),  # images, labelled, top1, top5, boxed, skipped
        "class_images": ((c,), torch.int64),
        "class_correct": ((c,), torch.int64),
        "class_boxed": ((c,), torch.int64),
        "class_hits": ((m, c), torch.int64),
        "class_centre": ((c,), torch.int64),
        "class_energy": ((m, c), torch.float64),
        "predicted": ((c,), torch.int64),
        "confusion": ((c, c), torch.int64),
        "pr_positive": ((c, PR_BINS), torch.int64),
        "pr_all": ((c, PR_BINS), torch.int64),
        "cam_sum": ((m, c, s, s), torch.float64),
        "image_sum": ((c, s, s, 3), torch.float32),
        "cam_count": ((c,), torch.int64),
    }


_COUNTS = ("images", "labelled", "top1", "top5", "boxed", "skipped")


class Aggregates:
    """Running figures of an audit; see the module docstring for what is kept."""

    def __init__(self, num_classes: int, methods: Sequence[str], *, map_size: int = 56, gallery_size: int = 16,
                 thumbnail: int = 112, sample: frozenset[int] = frozenset(), sample_thumbnail: int = 48) -> None:
        self.num_classes = num_classes
        self.methods = tuple(methods)
        self.map_size = map_size
        self.gallery_size = gallery_size
        self.thumbnail = thumbnail
        self.sample = sample
        self.sample_thumbnail = sample_thumbnail
        self.dense = {name: torch.zeros(shape, dtype=dtype)
                      for name, (shape, dtype) in _dense_shapes(num_classes, len(self.methods), map_size).items()}
        self.wrong: list[dict] = []  # most confidently wrong: key (-probability, index)
        self.lowest: list[dict] = []  # lowest energy in box of the first method: key (energy, index)
        self.samples: list[dict] = []  # the projector sample's entries
        self.skipped_files: list[str] = []

    # -- counts ------------------------------------------------------------------------
    def count(self, name: str) -> int:
        """One of images, labelled, top1, top5, boxed, skipped."""
        return int(self.dense["counts"][_COUNTS.index(name)])

    def skip(self, files: Sequence[str]) -> None:
        """Count files that could not be decoded (the first 20 names are kept)."""
        self.dense["counts"][_COUNTS.index("skipped")] += len(files)
        self.skipped_files.extend(files[: max(0, 20 - len(self.skipped_files))])

    # -- one batch -----------------------------------------------------------------------
    def update(self, stats: BatchStats, probs: torch.Tensor, maps: dict[str, torch.Tensor],
               images01: torch.Tensor, files: Sequence[str], features: torch.Tensor | None = None) -> None:
        """Fold one batch in.

        Args:
            stats: the batch's :class:`BatchStats`.
            probs: (n, C) class probabilities.
            maps: method -> (n, H, W) normalised first maps.
            images01: (n, 3, H, W) the inputs as the model saw them, un-normalised to [0, 1].
            files: the images' paths relative to the dataset.
            features: (n, D) penultimate features (needed only for images in the projector sample).
        """
        n = len(stats.indices)
        if n == 0:
            return
        d = self.dense
        labels = torch.from_numpy(stats.labels)
        labelled = labels >= 0
        top = torch.from_numpy(stats.top5)
        correct = labelled & (top[:, 0] == labels)
        in_top5 = labelled & (top == labels[:, None]).any(dim=1)
        boxed = torch.from_numpy(stats.boxed)
        counts = d["counts"]
        counts[0] += n
        counts[1] += int(labelled.sum())
        counts[2] += int(correct.sum())
        counts[3] += int(in_top5.sum())
        counts[4] += int(boxed.sum())
        d["predicted"].index_add_(0, top[:, 0], torch.ones(n, dtype=torch.int64))
        if labelled.any():
            lab = labels[labelled]
            ones = torch.ones(len(lab), dtype=torch.int64)
            d["class_images"].index_add_(0, lab, ones)
            d["class_correct"].index_add_(0, lab, correct[labelled].long())
            c = self.num_classes
            d["confusion"].view(-1).index_add_(0, lab * c + top[labelled, 0], ones)
            p = probs[labelled.to(probs.device)].float().cpu()
            bins = (p * PR_BINS).long().clamp_(0, PR_BINS - 1)
            flat = (torch.arange(c)[None, :] * PR_BINS + bins).reshape(-1)
            d["pr_all"].view(-1).add_(torch.bincount(flat, minlength=c * PR_BINS))
            own = bins.gather(1, lab[:, None])[:, 0]
            d["pr_positive"].view(-1).index_add_(0, lab * PR_BINS + own, ones)
            lab_boxed = labelled & boxed
            if lab_boxed.any():
                lb = labels[lab_boxed]
                d["class_boxed"].index_add_(0, lb, torch.ones(len(lb), dtype=torch.int64))
                d["class_centre"].index_add_(0, lb, torch.from_numpy(stats.centre)[lab_boxed].long())
                for m in range(len(self.methods)):
                    d["class_hits"][m].index_add_(0, lb, torch.from_numpy(stats.hits[m])[lab_boxed].long())
                    d["class_energy"][m].index_add_(0, lb, torch.from_numpy(stats.energy[m])[lab_boxed].double())
        # per-class mean CAM and mean image, at map_size x map_size
        s = self.map_size
        cam_class = torch.from_numpy(stats.cam_class)
        d["cam_count"].index_add_(0, cam_class, torch.ones(n, dtype=torch.int64))
        small_images = F.interpolate(images01.float(), size=(s, s), mode="area").permute(0, 2, 3, 1).cpu()
        d["image_sum"].index_add_(0, cam_class, small_images)
        small_maps = []
        for m, name in enumerate(self.methods):
            small = F.interpolate(maps[name][:, None].float(), size=(s, s), mode="area")[:, 0].double().cpu()
            d["cam_sum"][m].index_add_(0, cam_class, small)
            small_maps.append(small)
        self._galleries(stats, maps, images01, files, correct)
        self._sample(stats, images01, files, features, correct, labelled)

    def _thumb(self, image01: torch.Tensor, side: int) -> torch.Tensor:
        small = F.interpolate(image01[None].float(), size=(side, side), mode="area")[0]
        return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().contiguous()

    def _entry(self, i: int, stats: BatchStats, maps: dict[str, torch.Tensor], images01: torch.Tensor,
               files: Sequence[str], key: tuple[float, int]) -> dict:
        first = next(iter(maps.values()))
        t = self.thumbnail
        heat = F.interpolate(first[i][None, None].float(), size=(t, t), mode="bilinear", align_corners=False)[0, 0]
        height, width = first.shape[-2:]
        boxes = [[x0 * t / width, y0 * t / height, x1 * t / width, y1 * t / height]
                 for x0, y0, x1, y1 in (stats.boxes[i] if stats.boxes else ())]  # in the thumbnail's pixels
        return {"key": [float(key[0]), int(key[1])], "index": int(stats.indices[i]), "file": files[i],
                "label": int(stats.labels[i]), "predicted": int(stats.top5[i, 0]),
                "probability": float(stats.top5_prob[i, 0]), "energy": float(stats.energy[0, i]),
                "hit": bool(stats.hits[0, i]) if stats.boxed[i] else None,
                "thumbnail": self._thumb(images01[i], t), "heat": heat.cpu().half(), "boxes": boxes}

    def _offer(self, entries: list[dict], candidates: list[tuple[tuple[float, int], int]], make) -> list[dict]:
        limit = self.gallery_size
        if limit <= 0 or not candidates:
            return entries
        worst = max((tuple(e["key"]) for e in entries), default=None)
        if len(entries) >= limit:
            candidates = [c for c in candidates if c[0] < worst]
        entries = entries + [make(i, key) for key, i in sorted(candidates)[:limit]]
        entries.sort(key=lambda e: tuple(e["key"]))
        return entries[:limit]

    def _galleries(self, stats, maps, images01, files, correct) -> None:
        wrong = [((-float(stats.top5_prob[i, 0]), int(stats.indices[i])), i) for i in range(len(stats.indices))
                 if stats.labels[i] >= 0 and not bool(correct[i])]
        self.wrong = self._offer(self.wrong, wrong,
                                 lambda i, key: self._entry(i, stats, maps, images01, files, key))
        low = [((float(stats.energy[0, i]), int(stats.indices[i])), i) for i in range(len(stats.indices))
               if stats.boxed[i]]
        self.lowest = self._offer(self.lowest, low,
                                  lambda i, key: self._entry(i, stats, maps, images01, files, key))

    def _sample(self, stats, images01, files, features, correct, labelled) -> None:
        for i, index in enumerate(stats.indices):
            if int(index) not in self.sample or features is None:
                continue
            self.samples.append({
                "index": int(index), "file": files[i], "features": features[i].float().cpu().clone(),
                "label": int(stats.labels[i]), "predicted": int(stats.top5[i, 0]),
                "probability": float(stats.top5_prob[i, 0]),
                "correct": "unlabelled" if not bool(labelled[i]) else ("correct" if bool(correct[i]) else "wrong"),
                "thumbnail": self._thumb(images01[i], self.sample_thumbnail)})

    # -- merging, saving ----------------------------------------------------------------
    def merge_lists(self, others: Sequence[dict]) -> None:
        """Fold in the bounded lists of other processes' :meth:`lists` (the dense arrays are summed elsewhere)."""
        for other in others:
            self.wrong = sorted(self.wrong + other["wrong"], key=lambda e: tuple(e["key"]))[: self.gallery_size]
            self.lowest = sorted(self.lowest + other["lowest"], key=lambda e: tuple(e["key"]))[: self.gallery_size]
            self.samples = self.samples + other["samples"]
            self.skipped_files = (self.skipped_files + other["skipped_files"])[:20]
        self.samples.sort(key=lambda e: e["index"])

    def lists(self) -> dict:
        """The bounded lists (galleries, projector sample, skipped names)."""
        return {"wrong": self.wrong, "lowest": self.lowest, "samples": self.samples,
                "skipped_files": list(self.skipped_files)}

    def state_dict(self) -> dict:
        """Everything, as tensors and plain values (``torch.load(weights_only=True)`` reads it back).

        Mostly empty arrays (per-class sums of a 1000-class model after a few batches) are stored as
        their non-zero entries, so a checkpoint costs what has been seen, not the arrays' full size.
        """
        dense = {}
        for name, tensor in self.dense.items():
            flat = tensor.reshape(-1)
            where = torch.nonzero(flat).flatten()
            if len(where) * 3 < flat.numel():
                dense[name] = {"shape": list(tensor.shape), "where": where, "values": flat[where].clone()}
            else:
                dense[name] = tensor
        return {"dense": dense, **self.lists()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        for name, tensor in state["dense"].items():
            if isinstance(tensor, dict):  # stored sparse
                full = torch.zeros(tensor["shape"], dtype=tensor["values"].dtype)
                full.view(-1)[tensor["where"]] = tensor["values"]
                tensor = full
            if self.dense[name].shape != tensor.shape:
                raise StateError(f"saved {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(self.dense[name].shape)}")
            self.dense[name] = tensor.clone()
        self.wrong, self.lowest = list(state["wrong"]), list(state["lowest"])
        self.samples, self.skipped_files = list(state["samples"]), list(state["skipped_files"])

    # -- the figures ---------------------------------------------------------------------
    def class_rows(self, names: Sequence[str]) -> tuple[ClassAudit, ...]:
        """Per-class figures for every class with labelled images."""
        d = self.dense
        rows = []
        for c in torch.nonzero(d["class_images"]).flatten().tolist():
            boxed = int(d["class_boxed"][c])
            rows.append(ClassAudit(
                index=c, name=names[c] if c < len(names) else f"class {c}", images=int(d["class_images"][c]),
                correct=int(d["class_correct"][c]), boxed=boxed,
                hits=tuple(int(d["class_hits"][m, c]) for m in range(len(self.methods))),
                centre_hits=int(d["class_centre"][c]),
                energy=tuple(float(d["class_energy"][m, c]) / boxed if boxed else math.nan
                             for m in range(len(self.methods)))))
        return tuple(rows)

    def pointing(self) -> tuple[dict[str, float], float, dict[str, float]]:
        """Per method the share of boxed labelled images hit, the centre baseline's share, and the mean energy."""
        d = self.dense
        boxed = int(d["class_boxed"].sum())
        if not boxed:
            return {}, math.nan, {}
        hits = {m: int(d["class_hits"][i].sum()) / boxed for i, m in enumerate(self.methods)}
        energy = {m: float(d["class_energy"][i].sum()) / boxed for i, m in enumerate(self.methods)}
        return hits, int(d["class_centre"].sum()) / boxed, energy

    def present_classes(self) -> list[int]:
        """Classes with labelled images or predictions."""
        d = self.dense
        return torch.nonzero((d["class_images"] > 0) | (d["predicted"] > 0)).flatten().tolist()
