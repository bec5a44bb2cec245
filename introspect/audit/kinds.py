"""What differs between the dataset audits of different tasks, behind one interface the loop drives.

:func:`introspect.audit.run.audit` is one loop for every task: shard the dataset, stream it through a
DataLoader, fold each batch into aggregates, write its table rows as Parquet parts, checkpoint, sum the
aggregates over the processes and make the result. A task names its kind of audit
(``Task.audit_kind``: ``"classes"``, ``"boxes"``, ``"masks"``); the kind (an :class:`AuditKind`) says how a
labelled item of its dataset is read and checked, what one batch's pass, rows and aggregates are, and
what the result record is. :class:`KeyedAggregates` is the fixed-size, mergeable, resumable store the
detection and segmentation kinds share: dense sums, bounded galleries kept by key, and plain lists
gathered to rank 0 at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import StateError

__all__ = ["AuditKind", "KeyedAggregates", "ItemBatch", "collate_items", "item_loader", "pad_to_same", "grid"]


class AuditKind(ABC):
    """One kind of dataset audit (see the module docstring). Built once per run by the loop, on every rank,
    before anything is written: the constructor reads and checks the dataset and its ground truth (bad input
    raises a one-line :class:`~introspect.errors.UsageError`).

    Attributes:
        index: the dataset's items in a fixed order (``root``, ``files``, ``len()``).
        aggregates: ``dense`` (a dict of tensors summed over the processes), ``lists()``, ``merge_lists()``,
            ``state_dict()``, ``load_state_dict()``, ``skip(files)``.
        layer: the CAM layer's name (for the fingerprint and the settings).
    """

    index: Any
    aggregates: Any
    layer: str

    @staticmethod
    def check_options(loaded: Any, options: Any) -> None:
        """Refuse options that do not apply to this kind of audit (before the dataset is read)."""

    @abstractmethod
    def fingerprint(self) -> dict:
        """Settings a resumed run must share with the one it continues (beyond the loop's own)."""

    @abstractmethod
    def loader(self, batches: Sequence[Sequence[int]], num_workers: int, pin_memory: bool) -> Any:
        """A DataLoader over exactly ``batches`` (dataset indices); its batches carry ``indices`` and ``failed``."""

    @abstractmethod
    def schema(self) -> Any:
        """The pyarrow schema of the table's rows."""

    def hook(self, module: torch.nn.Module, scope: Any) -> None:
        """Hooks the batches need, put on ``scope`` (removed with it)."""

    @abstractmethod
    def run_batch(self, module: torch.nn.Module, batch: Any, files: Sequence[str]) -> dict[str, list]:
        """One batch: its one forward and one backward, folded into :attr:`aggregates`; returns its table rows."""

    def sanity(self, module: torch.nn.Module) -> Any:
        """The model-parameter randomisation check (rank 0, after the loop), or None where it does not apply."""
        return None

    @abstractmethod
    def settings(self) -> dict:
        """This kind's lines of the result's settings (ground truth, thresholds)."""

    @abstractmethod
    def result(self, settings: dict, table: str | None, seconds: float, sanity: Any) -> Any:
        """The result record, on rank 0, once the aggregates hold every process's figures."""


@dataclass
class ItemBatch:
    """A decoded batch of items that are not one stacked tensor (images of their own sizes, masks)."""

    items: list[Any]  # what each good item's dataset returned, beside its index
    indices: list[int]
    failed: list[tuple[int, str]]


def collate_items(items: list[tuple[Any, int, Any]]) -> ItemBatch:
    """Good items (``(value, index, extra)``, value not None) kept as they are; bad ones listed with their reason."""
    good = [(value, extra) for value, i, extra in items if value is not None]
    return ItemBatch(items=good, indices=[i for value, i, _ in items if value is not None],
                     failed=[(i, extra) for value, i, extra in items if value is None])


def item_loader(dataset: torch.utils.data.Dataset, batches: Sequence[Sequence[int]],
                num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over exactly ``batches``, decoded by ``num_workers`` processes, collated by
    :func:`collate_items`."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=num_workers,
                                       collate_fn=collate_items, prefetch_factor=2 if num_workers else None)


class KeyedAggregates:
    """Dense sums (added across processes), bounded galleries (entries with a ``key``; the ``limit`` smallest
    kept, so any split of the data keeps the same ones), and plain lists (gathered to rank 0 and concatenated,
    e.g. every detection for COCOeval); the first 20 unreadable files' names."""

    def __init__(self, dense: dict[str, tuple[tuple[int, ...], torch.dtype]], galleries: Sequence[str],
                 lists: Sequence[str] = (), limit: int = 16) -> None:
        self.dense = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in dense.items()}
        self.galleries: dict[str, list[dict]] = {name: [] for name in galleries}
        self.plain: dict[str, list] = {name: [] for name in lists}
        self.limit = limit
        self.skipped_files: list[str] = []
        self.skipped = 0

    def skip(self, files: Sequence[str]) -> None:
        """Count files that could not be decoded (the first 20 names are kept)."""
        self.skipped += len(files)
        self.skipped_files.extend(files[: max(0, 20 - len(self.skipped_files))])

    def worth(self, gallery: str, key: Sequence[float]) -> bool:
        """Whether an entry with ``key`` would be kept (so that its pictures need be made at all)."""
        entries = self.galleries[gallery]
        return self.limit > 0 and (len(entries) < self.limit or tuple(key) < tuple(entries[-1]["key"]))

    def offer(self, gallery: str, entry: dict) -> None:
        """Keep ``entry`` (it has a ``key``) if it is among the ``limit`` smallest keys."""
        entries = self.galleries[gallery]
        entries.append(entry)
        entries.sort(key=lambda e: tuple(e["key"]))
        del entries[self.limit:]

    def lists(self) -> dict:
        """Everything that is not summed: galleries, plain lists, skipped files."""
        return {"galleries": self.galleries, "plain": self.plain, "skipped_files": list(self.skipped_files),
                "skipped": self.skipped}

    def merge_lists(self, others: Sequence[dict]) -> None:
        """Fold in the :meth:`lists` of other processes (in rank order)."""
        for other in others:
            for name, entries in other["galleries"].items():
                for entry in entries:
                    self.offer(name, entry)
            for name, values in other["plain"].items():
                self.plain[name].extend(values)
            self.skipped_files = (self.skipped_files + other["skipped_files"])[:20]
            self.skipped += other["skipped"]

    def state_dict(self) -> dict:
        """Everything, as tensors and plain values (``torch.load(weights_only=True)`` reads it back)."""
        return {"dense": dict(self.dense), **self.lists()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        for name, tensor in state["dense"].items():
            if self.dense[name].shape != tensor.shape:
                raise StateError(f"saved {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(self.dense[name].shape)}")
            self.dense[name] = tensor.clone()
        self.galleries = {name: list(entries) for name, entries in state["galleries"].items()}
        self.plain = {name: list(values) for name, values in state["plain"].items()}
        self.skipped_files, self.skipped = list(state["skipped_files"]), int(state["skipped"])


def grid(panels: Sequence[Any], columns: int = 1) -> Any:
    """Gallery panels (uint8, any sizes) padded to one size and tiled ``columns`` per row. Each panel's labels are
    sized for TensorBoard's card width (``drawing.labelled_panels``): one panel a row keeps them legible there."""
    from ..drawing import tile_grid

    import numpy as np

    return tile_grid(np.stack(pad_to_same(panels)), ncols=min(columns, len(panels)), padding=6)


def pad_to_same(panels: Sequence[Any]) -> list[Any]:
    """uint8 (H, W, 3) panels padded with white (bottom, right) to the largest height and width, for one grid."""
    import numpy as np

    height = max(p.shape[0] for p in panels)
    width = max(p.shape[1] for p in panels)
    return [np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0)), constant_values=255)
            for p in panels]
