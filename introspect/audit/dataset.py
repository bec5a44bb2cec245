"""The audit's images: an ImageFolder walk, the labels it implies, and a DataLoader that decodes in workers.

Class folders are matched to the model's classes by category name (case-insensitive), by WordNet id
(``n01440764``: through a ``LOC_synset_mapping.txt`` in the dataset folder or its parent, the ImageNet
devkit's list of the 1000 wnids in class order; or, with all 1000 folders present, their sorted order,
which is ImageNet's class order) or by class index (``0``, ``17``); failing those, with as many folders as
the model has classes, by sorted folder name as torchvision's ``ImageFolder`` numbers them (a model without
names of its own then takes the folders' names). A folder whose images sit directly in it (no class folders)
has no labels. A file that cannot be decoded is skipped in the worker and counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..categories import is_numbered
from ..errors import UsageError

__all__ = ["DatasetIndex", "scan_dataset", "AuditImages", "LoadedBatch", "collate", "make_loader"]

_WNID = re.compile(r"^n\d{8}$")
_SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "wnids.txt")


@dataclass(frozen=True)
class DatasetIndex:
    """Every image file of a dataset folder, in a fixed order, with its class index (-1: no label)."""

    root: Path
    files: tuple[str, ...]  # paths relative to root, posix style, sorted
    labels: tuple[int, ...]
    labelled: bool
    how: str  # how class folders were matched, in words
    class_names: tuple[str, ...] | None = None  # the folders' names, for a model whose classes have none

    def __len__(self) -> int:
        return len(self.files)


def _synsets(root: Path) -> list[str] | None:
    for folder in (root, root.parent):
        for name in _SYNSET_FILES:
            path = folder / name
            if path.is_file():
                wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
                if wnids and all(_WNID.match(w) for w in wnids):
                    return wnids
    return None


def _match_folders(root: Path, folders: Sequence[str], categories: Sequence[str]) -> tuple[dict[str, int], str]:
    lowered = {name.lower(): i for i, name in enumerate(categories)}
    if all(f.lower() in lowered for f in folders):
        return {f: lowered[f.lower()] for f in folders}, "class folders named by the model's categories"
    if all(_WNID.match(f) for f in folders):
        wnids = _synsets(root)
        if wnids is not None and len(wnids) == len(categories):
            index = {w: i for i, w in enumerate(wnids)}
            unknown = [f for f in folders if f not in index]
            if unknown:
                raise UsageError(f"class folders {', '.join(unknown[:4])} are not in the synset list of {root}")
            return {f: index[f] for f in folders}, "WordNet-id folders through the synset list"
        if len(folders) == len(categories) == 1000:
            return {f: i for i, f in enumerate(sorted(folders))}, "WordNet-id folders in sorted (ImageNet) order"
        if len(folders) != len(categories):
            raise UsageError(f"{root} has WordNet-id class folders but no LOC_synset_mapping.txt beside them to map "
                             f"them to the model's {len(categories)} classes: add that file (ImageNet devkit) or "
                             "name the folders by class name or index")
    elif all(f.isdigit() for f in folders):
        index = {f: int(f) for f in folders}
        bad = [f for f, i in index.items() if i >= len(categories)]
        if bad:
            raise UsageError(f"class folder {bad[0]} is out of range: the model has classes 0 to "
                             f"{len(categories) - 1}")
        return index, "class folders named by index"
    if len(folders) == len(categories):
        return _image_folder_order(folders, categories, lowered)
    unknown = [f for f in folders if f.lower() not in lowered and not f.isdigit()]
    shown = ", ".join(repr(f) for f in unknown[:4])
    raise UsageError(f"class folders {shown} of {root} are neither the model's category names, WordNet ids nor "
                     f"class indices, and their {len(folders)} folders are not one per class of the model's "
                     f"{len(categories)} (torchvision ImageFolder's numbering by sorted name): rename them, or put "
                     "the images in one flat folder (no labels)")


def _image_folder_order(folders: Sequence[str], categories: Sequence[str],
                        lowered: dict[str, int]) -> tuple[dict[str, int], str]:
    """torchvision ImageFolder's numbering: the i-th folder in sorted order is class i (refused where a folder is
    named after another class of the model)."""
    order = sorted(folders)
    for i, folder in enumerate(order):
        named = lowered.get(folder.lower())
        if named is not None and named != i:
            raise UsageError(f"class folder {folder!r} is the model's class {named} by name but class {i} by sorted "
                             "order (torchvision ImageFolder's numbering): name every folder by the model's class "
                             "names, or give the names in the folders' sorted order (categories=LABELS_FILE)",
                             parameter="categories")
    pairs = ", ".join(f"{f} = {categories[i]}" for i, f in enumerate(order[:6])) + (", ..." if len(order) > 6 else "")
    return {f: i for i, f in enumerate(order)}, f"class folders mapped by sorted name, as torchvision's ImageFolder " \
                                                f"numbers them ({pairs})"


def scan_dataset(root: str | Path, categories: Sequence[str]) -> DatasetIndex:
    """List the images under ``root`` (an ImageFolder tree or a flat folder) and their labels.

    Args:
        root: the dataset folder.
        categories: the model's class names, in class-index order.
    Returns:
        A :class:`DatasetIndex` with files sorted by relative path.
    """
    from ..images import IMAGE_SUFFIXES

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"dataset folder {root} does not exist or is not a folder: check dataset=")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}): check dataset=")
    relative = [p.relative_to(root).as_posix() for p in files]
    folders = sorted({r.split("/", 1)[0] for r in relative if "/" in r})
    if not folders:
        return DatasetIndex(root, tuple(relative), tuple(-1 for _ in relative), False, "a flat folder: no labels")
    mapping, how = _match_folders(root, folders, categories)
    labels = tuple(mapping[r.split("/", 1)[0]] if "/" in r else -1 for r in relative)
    class_names = None
    if is_numbered(categories) and not all(f.isdigit() for f in mapping) and \
            sorted(mapping.values()) == list(range(len(categories))):  # no names of its own: the folders'
        class_names = tuple(sorted(mapping, key=mapping.__getitem__))
        how += "; classes named by their folders"
    return DatasetIndex(root, tuple(relative), labels, True, how, class_names)


def read_photo(path: Path):
    """A dataset image as RGB, its multi-frame / huge-image notes silenced (not worth a line per file); a bad file
    raises :class:`~introspect.errors.ImageError`."""
    import warnings

    from ..images import load_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image(path)


class AuditImages(torch.utils.data.Dataset):
    """Item ``i``: (tensor (3, H, W), i, (width, height) of the original) or (None, i, reason) for a bad file."""

    def __init__(self, index: DatasetIndex, transform: Any) -> None:
        self.index = index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, Any]:
        from ..errors import ImageError
        from ..images import preprocess

        path = self.index.root / self.index.files[i]
        try:
            image = read_photo(path)
            return preprocess(image, self.transform)[0], i, image.size
        except (ImageError, OSError, ValueError) as error:
            return None, i, " ".join(str(error).split())


@dataclass
class LoadedBatch:
    """A decoded batch: tensors, dataset indices, original sizes, and the files that failed."""

    tensor: torch.Tensor  # (n, 3, H, W); n may be 0 when every file failed
    indices: list[int]
    sizes: list[tuple[int, int]]
    failed: list[tuple[int, str]]

    def pin_memory(self) -> LoadedBatch:
        """Page-locked tensor (the DataLoader calls this with ``pin_memory=True``): faster copies to the GPU."""
        self.tensor = self.tensor.pin_memory()
        return self


def collate(items: list[tuple[Any, int, Any]]) -> LoadedBatch:
    """Stack the good items; the bad ones (None) are listed with their reason instead of breaking the batch."""
    good = [item for item in items if item[0] is not None]
    failed = [(i, reason) for tensor, i, reason in items if tensor is None]
    tensor = torch.stack([t for t, _, _ in good]) if good else torch.empty(0)
    return LoadedBatch(tensor, [i for _, i, _ in good], [tuple(s) for _, _, s in good], failed)


def make_loader(images: AuditImages, batches: Sequence[Sequence[int]], num_workers: int,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over exactly ``batches`` (lists of dataset indices), decoded by ``num_workers`` processes."""
    return torch.utils.data.DataLoader(images, batch_sampler=[list(b) for b in batches], num_workers=num_workers,
                                       collate_fn=collate, pin_memory=pin_memory,
                                       prefetch_factor=2 if num_workers else None)
